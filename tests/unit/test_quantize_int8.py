"""The INT8 quantization step of the model build (scripts/quantize_int8.py) on a tiny ONNX model:
a good calibration passes the quality gate and writes the model; a calibration that does not fit
the images (or fails) is refused with its numbers and leaves nothing written."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
quantize_int8 = importlib.import_module("quantize_int8")


def tiny_model(path):
    """uint8 NHWC images [N, 16, 16, 3] -> transpose, cast, centre, scale (the preprocessing) ->
    two Conv+Relu, global average pool, a MatMul: 4-d "embeddings"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"mean": np.float32(127.5).reshape(()), "scale": np.float32(1 / 64).reshape(()),
               "w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
               "w2": rng.normal(0, 0.3, (8, 8, 3, 3)), "fc": rng.normal(0, 0.3, (8, 4))}
    nodes = [helper.make_node("Transpose", ["images"], ["t"], perm=[0, 3, 1, 2], name="transpose"),
             helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sub", ["f", "mean"], ["c"], name="sub"),
             helper.make_node("Mul", ["c", "scale"], ["x"], name="mul"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "fc"], ["embeddings"], name="fc")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "fp32.onnx")


def images(low: int, high: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, 16, 16, 3), dtype=np.uint8)


def test_a_fitting_calibration_passes_the_gate_and_writes_a_qdq_int8_model(tiny, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "tiny_int8" / "1" / "model.onnx"
    record = quantize_int8.quantize_checked(tiny, out, images(0, 256, 32, 1), images(0, 256, 64, 2))
    quality = record["quality"]
    assert quality["images"] == 64 and quality["cosine_median"] >= 0.98 and quality["cosine_p1"] >= 0.95
    assert quality["gate"] == {"min_median": 0.98, "min_p1": 0.95}
    assert "INT8 quality gate passed" in capsys.readouterr().out
    assert record["quantization"]["not_quantized"] == ["transpose", "cast", "sub", "mul"]
    assert record["quantization"]["calibration_images"] == 32
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no staging file left behind
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"images": images(0, 256, 2, 3)})[0]
    assert got.shape == (2, 4) and got.dtype == np.float32


def test_the_gate_refuses_a_model_whose_quality_is_below_threshold_and_writes_nothing(tiny, tmp_path):
    # Calibrated on near-grey images only: activations of real contrast saturate.
    model_dir = tmp_path / "tiny_int8"
    with pytest.raises(SystemExit, match=r"INT8 quality gate failed .* median 0\.\d+, 1st percentile 0\.\d+.*"
                                         r"needed: median >= 0\.98, 1st percentile >= 0\.95.*no INT8 model written"):
        quantize_int8.quantize_checked(tiny, model_dir / "1" / "model.onnx", images(120, 136, 32, 1),
                                       images(0, 256, 64, 2))
    assert not model_dir.exists()


def test_a_refused_rebuild_leaves_the_previous_model_in_place(tiny, tmp_path):
    out = tmp_path / "tiny_int8" / "1" / "model.onnx"
    quantize_int8.quantize_checked(tiny, out, images(0, 256, 32, 1), images(0, 256, 64, 2))
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(SystemExit, match="quality gate failed"):
        quantize_int8.quantize_checked(tiny, out, images(120, 136, 32, 1), images(0, 256, 64, 2))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def test_a_failed_calibration_stops_the_build_and_writes_nothing(tiny, tmp_path):
    wrong_shape = np.zeros((8, 16, 16, 4), dtype=np.uint8)  # four channels: the graph refuses them
    with pytest.raises(SystemExit, match="(?s)INT8 calibration of .* failed.*no INT8 model written"):
        quantize_int8.quantize_checked(tiny, tmp_path / "m" / "1" / "model.onnx", wrong_shape, images(0, 256, 8, 2))
    with pytest.raises(SystemExit, match="INT8 calibration of .* failed"):
        quantize_int8.quantize_checked(tiny, tmp_path / "m" / "1" / "model.onnx", images(0, 256, 0, 1),
                                       images(0, 256, 8, 2))
    assert not (tmp_path / "m").exists()


def _fake_fp32_build(repository, tiny):
    """A repository with a "resnet50" fp32 build whose model.onnx is the tiny model."""
    model_dir = repository / "resnet50"
    (model_dir / "1").mkdir(parents=True)
    onnx_path = model_dir / "1" / "model.onnx"
    onnx_path.write_bytes(tiny.read_bytes())
    info = {"name": "resnet50", "version": "1", "dimension": 4, "input_size": 16, "resize_to": 16,
            "preprocess": "imagenet", "input_name": "images", "output_name": "embeddings", "trained": False,
            "weights_source": "untrained", "weights_sha256": "", "precision": "fp32",
            "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}
    (model_dir / "build_info.json").write_text(json.dumps(info))
    return info


def test_an_int8_record_is_stale_once_its_fp32_model_is_rebuilt(tiny, tmp_path):
    fp32 = _fake_fp32_build(tmp_path, tiny)
    current = {"name": "resnet50_int8", "fp32_model": "resnet50", "fp32_onnx_sha256": fp32["onnx_sha256"]}
    assert quantize_int8.stale(tmp_path, current) == ""
    assert quantize_int8.stale(tmp_path, {**current, "fp32_onnx_sha256": "0" * 64}) == "resnet50 was rebuilt since"
    assert quantize_int8.stale(tmp_path, {"name": "resnet50"}) == ""  # not an INT8 model
    assert quantize_int8.stale(tmp_path / "empty", current) == "resnet50 is not built"


def _build_models_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_models_int8_test", ROOT / "scripts" / "build_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_needs_its_fp32_model_built_first(tmp_path):
    build_models = _build_models_module()
    with pytest.raises(SystemExit, match=r"resnet50_int8.*resnet50('s model.onnx, which)? is not built"):
        build_models.main(["--repository", str(tmp_path), "--models", "resnet50_int8", "--allow-untrained"])
    assert not (tmp_path / "resnet50_int8" / "build_info.json").exists()


def test_without_the_calibration_images_a_plain_build_skips_int8_and_a_named_one_stops(tiny, tmp_path, monkeypatch,
                                                                                         capsys):
    build_models = _build_models_module()
    _fake_fp32_build(tmp_path / "repo", tiny)
    monkeypatch.setattr(quantize_int8, "SHARED_DATA", tmp_path / "no_data")
    monkeypatch.setattr(build_models, "BUILDERS", {"resnet50_int8": build_models.build_int8})
    assert build_models.main(["--repository", str(tmp_path / "repo"), "--allow-untrained"]) == 0
    notice = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resnet50_int8: skipped")]
    assert len(notice) == 1 and "no calibration images at" in notice[0]
    with pytest.raises(SystemExit, match="resnet50_int8: skipped"):
        build_models.main(["--repository", str(tmp_path / "repo"), "--models", "resnet50_int8"])
    assert not (tmp_path / "repo" / "resnet50_int8").exists()


def test_the_built_int8_models_record_their_precision_quality_and_fp32_source():
    repository = ROOT / "model_repository"
    for name, fp32_name in quantize_int8.INT8_OF.items():
        info_file = repository / name / "build_info.json"
        if not info_file.exists():
            pytest.skip(f"{name} is not built (make test builds it)")
        info, fp32 = (json.loads((repository / n / "build_info.json").read_text()) for n in (name, fp32_name))
        assert info["precision"] == "int8" and info["fp32_onnx_sha256"] == fp32["onnx_sha256"]
        for key in ("dimension", "input_size", "resize_to", "preprocess", "input_name", "output_name", "trained"):
            assert info[key] == fp32[key], key
        quality = info["quality"]
        assert quality["images"] == quantize_int8.QUALITY_IMAGES
        assert quality["cosine_median"] >= 0.98 and quality["cosine_p1"] >= 0.95
        assert info["quantization"]["calibration_images"] == quantize_int8.CALIBRATION_IMAGES
