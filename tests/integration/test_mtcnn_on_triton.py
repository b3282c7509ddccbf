"""MTCNN's nets served by the managed CPU Triton (the Python-backend runner with several outputs and
P-Net's free image size, in OpenVINO as the server asks) give what they give in-process, and so the
same faces; their inputs reach Triton through a shared-memory region as they would inside the gRPC
messages, the region is registered again when Triton forgets it and removed when the client closes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from revsearch_server.faces.detector import DetectorSettings
from revsearch_server.faces.input_region import SHM_DIR
from revsearch_server.faces.net_runners import LocalNets, TritonNets
from revsearch_server.faces.onnx_mtcnn import NET_NAMES, OnnxMtcnnDetector
from revsearch_server.models import detector_nets
from revsearch_server.triton_managed import ManagedTriton
from tests.helpers import HAMILTON_CLIP, HAMILTON_FRAME, ROOT, lfw_images, video_frame

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nets():
    found = detector_nets(ROOT / "model_repository")
    assert set(NET_NAMES) <= set(found), "MTCNN's nets are not built: python scripts/build_models.py --models mtcnn"
    return found


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """The managed Triton with the nets in OpenVINO, as the server starts it by default."""
    triton = ManagedTriton(ROOT / "model_repository", tmp_path_factory.mktemp("triton"), list(NET_NAMES),
                           runtimes=dict.fromkeys(NET_NAMES, "openvino"))
    url = triton.start()
    try:
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(url)
        for _ in range(240):
            try:
                if all(client.is_model_ready(n) for n in NET_NAMES):
                    break
            except Exception:
                pass
            assert triton.alive(), triton.log_path.read_text()[-2000:]
            time.sleep(0.5)
        yield triton, url
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def triton_nets(nets, triton):
    """The nets on Triton as the server calls them: inputs through shared memory."""
    runner = TritonNets(triton[1], nets, timeout_s=60, local_shared_memory=True)
    yield runner
    runner.close()


def test_every_net_answers_on_triton_with_all_its_outputs_as_in_process(nets, triton_nets):
    local = LocalNets(nets)
    rng = np.random.default_rng(2)
    for name, shape in (("mtcnn_pnet", (3, 3, 151, 151)), ("mtcnn_pnet", (2, 3, 13, 57)),
                        ("mtcnn_rnet", (40, 3, 24, 24)), ("mtcnn_onet", (7, 3, 48, 48))):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        expected, got = local(name, x), triton_nets(name, x)
        assert [g.shape for g in got] == [e.shape for e in expected], name
        assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) < 1e-5, name


def test_concurrent_pnet_requests_of_different_sizes_each_get_their_own_answer(nets, triton_nets):
    local = LocalNets(nets)
    rng = np.random.default_rng(3)
    inputs = [rng.uniform(-1, 1, (1, 3, 20 + 7 * k, 30 + 5 * k)).astype(np.float32) for k in range(8)]
    with ThreadPoolExecutor(8) as pool:  # the dynamic batcher sees requests of several shapes at once
        answers = list(pool.map(lambda x: triton_nets("mtcnn_pnet", x), inputs))
    for x, got in zip(inputs, answers):
        expected = local("mtcnn_pnet", x)
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) < 1e-5


def test_the_detector_finds_the_same_faces_through_triton_as_in_process(nets, triton_nets):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in lfw_images(8, per_person_max=1)]
    images.append(video_frame(HAMILTON_CLIP, HAMILTON_FRAME))
    settings = DetectorSettings(min_face_size=20, min_confidence=0.0)
    by_triton = OnnxMtcnnDetector(triton_nets, settings).detect(images)
    in_process = OnnxMtcnnDetector(LocalNets(nets), settings).detect(images)
    assert [len(f) for f in by_triton] == [len(f) for f in in_process] and sum(map(len, in_process)) >= 10
    for a, b in zip(by_triton, in_process):
        for fa, fb in zip(a, b):
            assert np.allclose(fa.box, fb.box, atol=1e-2) and fa.confidence == pytest.approx(fb.confidence, abs=1e-5)


def test_the_nets_run_in_openvino_on_triton_as_asked(triton, triton_nets):
    triton_nets("mtcnn_rnet", np.zeros((2, 3, 24, 24), np.float32))
    log = triton[0].log_path.read_text()
    for name in NET_NAMES:
        assert f"{name} (instance " in log and f"{name} (instance {name}_0_0): openvino" in log, log[-3000:]


def test_inputs_through_shared_memory_give_what_grpc_messages_give_and_the_region_grows_and_goes(nets, triton):
    rng = np.random.default_rng(4)
    by_messages = TritonNets(triton[1], nets, timeout_s=60)
    shared = TritonNets(triton[1], nets, timeout_s=60, local_shared_memory=True)
    shared._region._initial = 64 * 1024  # starts small, so the larger batches below make it grow
    try:
        for name, shape in (("mtcnn_rnet", (3, 3, 24, 24)), ("mtcnn_pnet", (4, 3, 151, 171)),
                            ("mtcnn_onet", (9, 3, 48, 48)), ("mtcnn_rnet", (300, 3, 24, 24))):
            x = rng.uniform(-1, 1, shape).astype(np.float32)
            a, b = shared(name, x), by_messages(name, x)
            assert [p.shape for p in a] == [q.shape for q in b] and all(np.array_equal(p, q) for p, q in zip(a, b))
        region = SHM_DIR / shared._region.name
        assert region.exists() and region.stat().st_size >= 4 * 3 * 151 * 171 * 4
        # A restarted Triton has forgotten every region: the next call registers it again.
        shared._client.unregister_system_shared_memory()
        x = rng.uniform(-1, 1, (5, 3, 24, 24)).astype(np.float32)
        assert all(np.array_equal(p, q) for p, q in zip(shared("mtcnn_rnet", x), by_messages("mtcnn_rnet", x)))
    finally:
        shared.close()
        by_messages.close()
    assert not region.exists()
    with pytest.raises(Exception, match="closed"):
        shared("mtcnn_rnet", x)
