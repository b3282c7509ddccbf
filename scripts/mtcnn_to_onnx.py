"""MTCNN's three nets (facenet-pytorch's P-, R- and O-Net, weights from its wheel) to ONNX.

The server's detector (server/revsearch_server/faces/onnx_mtcnn.py) runs facenet-pytorch's
algorithm in numpy and only the nets through an inference backend (Triton, or ONNX Runtime in
the server process), so the serving environment needs no torch. Each net is exported as it is:

  mtcnn_pnet  images float32 [N, 3, H, W] (any H, W >= 12)  ->  reg [N, 4, h, w], prob [N, 2, h, w]
  mtcnn_rnet  images float32 [N, 3, 24, 24]                 ->  reg [N, 4], prob [N, 2]
  mtcnn_onet  images float32 [N, 3, 48, 48]                 ->  reg [N, 4], landmarks [N, 10], prob [N, 2]

Input: RGB, NCHW, normalised as facenet-pytorch does, (x - 127.5) * 0.0078125; not transposed
(facenet-pytorch's converted weights take rows as H; the transposition of the original Caffe nets
is inside R- and O-Net, before their dense layers, and is exported with them). The outputs are
the torch modules' outputs, in their order. `build` checks every net against torch (max abs
difference, several input sizes) and refuses to write a record when they differ.

Used by scripts/build_models.py (builders mtcnn_pnet, mtcnn_rnet, mtcnn_onet).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

# name -> (facenet-pytorch class, weights file, fixed input side or None, output names)
NETS = {
    "mtcnn_pnet": ("PNet", "pnet.pt", None, ["reg", "prob"]),
    "mtcnn_rnet": ("RNet", "rnet.pt", 24, ["reg", "prob"]),
    "mtcnn_onet": ("ONet", "onet.pt", 48, ["reg", "landmarks", "prob"]),
}
# Nets whose PRelu layers are rewritten after export (_rewrite_prelu: bit-identical, faster).
PRELU_REWRITE = {"mtcnn_pnet", "mtcnn_rnet"}
GRAPH_VERSION = 2  # build records of an older graph are rebuilt (scripts/build_models.py)
MAX_ABS_DIFF = 1e-4  # the check's limit (softmax probabilities and regression offsets are O(1))
# Input sizes the check runs P-Net at: odd and even sides (ceil-mode pooling), small and large.
PNET_CHECK_SIZES = [(12, 12), (13, 17), (151, 151), (73, 130), (325, 577)]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _torch_net(name: str):
    import facenet_pytorch
    from facenet_pytorch.models import mtcnn as mtcnn_module

    cls_name, weights, _, _ = NETS[name]
    net = getattr(mtcnn_module, cls_name)(pretrained=True).eval()
    weights_file = Path(facenet_pytorch.__file__).parent / "data" / weights
    from importlib.metadata import version

    return net, weights_file, version("facenet-pytorch")


def _check_inputs(name: str, rng):
    """Normalised inputs for the check: uniform noise plus smooth image-like content."""
    import numpy as np

    side = NETS[name][2]
    sizes = PNET_CHECK_SIZES if side is None else [(side, side)]
    out = []
    for h, w in sizes:
        n = 3 if side is None else 64
        noise = rng.uniform(0, 255, (n, 3, h, w))
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 127.5 + 100 * np.sin(xx / 7.0 + rng.uniform(0, 6, (n, 3, 1, 1))) * np.cos(yy / 5.0)
        pixels = np.where(rng.uniform(size=(n, 1, 1, 1)) < 0.5, noise, smooth)
        out.append(((pixels - 127.5) * 0.0078125).astype(np.float32))
    return out


def export(name: str, onnx_path: Path) -> dict:
    """Writes one net to onnx_path, checks it against torch; returns its build record."""
    import numpy as np
    import onnxruntime as ort
    import torch

    net, weights_file, version = _torch_net(name)
    _, _, side, outputs = NETS[name]
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, 3, side or 48, side or 64), dtype=torch.float32)
    axes = {"images": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    if side is None:  # P-Net is fully convolutional: any height and width
        axes = {"images": {0: "batch", 2: "height", 3: "width"},
                **{o: {0: "batch", 2: "out_height", 3: "out_width"} for o in outputs}}
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter, as for the other models
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(onnx_path), input_names=["images"], output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)

    rewritten = name in PRELU_REWRITE
    if rewritten:
        _rewrite_prelu(onnx_path, name)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in _check_inputs(name, np.random.default_rng(0)):
        with torch.no_grad():
            expected = [t.numpy() for t in net(torch.from_numpy(batch))]
        got = session.run(outputs, {"images": batch})
        for out_name, e, g in zip(outputs, expected, got):
            if e.shape != g.shape:
                raise SystemExit(f"{name}: ONNX output {out_name} has shape {g.shape}, torch {e.shape} "
                                 f"(input {batch.shape})")
            worst = max(worst, float(np.abs(e - g).max()))
    if worst > MAX_ABS_DIFF:
        raise SystemExit(f"{name}: ONNX export disagrees with facenet-pytorch (max abs diff {worst:.2e} > "
                         f"{MAX_ABS_DIFF:.0e}); refusing to build")
    print(f"  {name}: ONNX matches facenet-pytorch's {NETS[name][0]}: max abs diff {worst:.2e}")
    return {"name": name, "version": "1", "kind": "detector", "detector": "mtcnn",
            "input_name": "images", "input_size": side or 0, "output_names": outputs, "trained": True,
            "weights_source": f"facenet-pytorch {version} {weights_file.name}",
            "weights_sha256": _sha256(weights_file), "onnx_sha256": _sha256(onnx_path),
            "max_abs_diff": worst, "graph": GRAPH_VERSION, "prelu_rewritten": rewritten}


def _rewrite_prelu(onnx_path: Path, name: str) -> None:
    """Replaces every PRelu(x, a) by Relu(x) + Relu(-x) * (-a), in place, and checks on the check
    inputs that the rewritten graph gives the exported one's outputs bit for bit (refuses to build
    otherwise). It is the same function in the same float32 arithmetic: for x < 0, Relu(-x) is -x
    exactly and (-x) * (-a) is a * x exactly; for x >= 0 the second term is zero. ONNX Runtime
    runs PRelu through a generic broadcast kernel between layout reorders (36-50% of these nets'
    time in its profile); the rewrite runs R-Net 1.5x as fast (9.0 -> 5.9 ms for 128 crops) and
    P-Net 1.15x (10.8 -> 9.4 ms for 8 images at 151 px). O-Net is left as exported: no gain there
    (47.1 vs 48.9 ms for 128 crops)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    original = model.SerializeToString()
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope, y = node.input[0], node.input[1], node.output[0]
        stem = node.name.strip("/").replace("/", "_") or y
        negated = f"{stem}_negated_slope"
        graph.initializer.append(numpy_helper.from_array(-numpy_helper.to_array(inits[slope]), negated))
        nodes += [helper.make_node("Relu", [x], [f"{stem}_pos"], name=f"{stem}_relu"),
                  helper.make_node("Neg", [x], [f"{stem}_neg_x"], name=f"{stem}_neg"),
                  helper.make_node("Relu", [f"{stem}_neg_x"], [f"{stem}_neg_part"], name=f"{stem}_relu_neg"),
                  helper.make_node("Mul", [f"{stem}_neg_part", negated], [f"{stem}_scaled"], name=f"{stem}_mul"),
                  helper.make_node("Add", [f"{stem}_pos", f"{stem}_scaled"], [y], name=f"{stem}_add")]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    before = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in before.get_outputs()]
    for batch in _check_inputs(name, np.random.default_rng(1)):
        for a, b in zip(before.run(outputs, {"images": batch}), after.run(outputs, {"images": batch})):
            if not np.array_equal(a, b):
                raise SystemExit(f"{onnx_path}: the PRelu rewrite changed the outputs (max abs diff "
                                 f"{float(np.abs(a - b).max()):.2e}); refusing to build")
    onnx.save(model, str(onnx_path))


def build(out_dir: Path) -> dict:
    """Build entry for scripts/build_models.py: out_dir is model_repository/<net name>."""
    return export(out_dir.name, out_dir / "1" / "model.onnx")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for <net>.onnx")
    args = parser.parse_args()
    for net_name in NETS:
        export(net_name, args.out / f"{net_name}.onnx")
