"""Runs the face detector's nets (faces/onnx_mtcnn.py's `run(net, batch) -> outputs`), blocking,
from the faces worker thread: in this process (OpenVINO, or ONNX Runtime), Triton, or Triton with
the local one as its fallback. On the managed Triton the nets run with the same runtime, chosen
by --face-net-runtime (model_repository/onnx_runner.py).

Triton is called with tritonclient's synchronous gRPC client from the worker thread itself. The
detector is blocking code in its own thread and makes a dozen or so net calls per batch (P-Net
per pyramid level, then R- and O-Net); a blocking call there waits for nothing but Triton, while
scheduling each call on the server's event loop (asyncio.run_coroutine_threadsafe with the aio
client) would add two thread hops per call and make detection wait whenever the loop is busy with
gRPC traffic. The sync client has its own channel; it is thread-safe and cheap to keep.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from ..errors import Unavailable
from ..models import DetectorNet

log = logging.getLogger(__name__)


RUNTIMES = ("onnxruntime", "openvino")
# OpenVINO compiles kernels per input shape and keeps them in a cache of this many entries per net
# (its default is 5,000): bounded so that a stream of images of ever new sizes (every P-Net pyramid
# level a new shape) cannot grow the process without end. Measured on 110 LFW photos each resized
# to its own random size: 5,000 entries grew the process by 600 MB, 1,000 by 310 MB; images of a
# repeating size (video frames, LFW) detect as fast with either. Padding R- and O-Net batches to
# fewer sizes was tried: it cost 5-20% (O-Net's small batches tripled), so batches go as they are.
OPENVINO_CACHE_ENTRIES = 1000


def resolve_runtime(choice: str) -> str:
    """The in-process runtime of the nets: "auto" is OpenVINO when it is installed (it runs these
    small convolution nets 1.5-2.2x faster than ONNX Runtime on this CPU: benchmarks/results/
    onnx_mtcnn.md), else ONNX Runtime."""
    import importlib.util

    if choice == "auto":
        return "openvino" if importlib.util.find_spec("openvino") is not None else "onnxruntime"
    if choice not in RUNTIMES:
        raise ValueError(f"unknown runtime {choice!r}; use auto, {' or '.join(RUNTIMES)}")
    return choice


class LocalNets:
    """The nets in this process (OpenVINO or ONNX Runtime), each loaded on first use."""

    def __init__(self, nets: dict[str, DetectorNet], threads: int | None = None, spinning: bool = False,
                 runtime: str = "auto"):
        """spinning off by default (ONNX Runtime): between the nets' short runs the worker does numpy
        work, and spinning threads would take those cores from it and from the embedding runs."""
        self._nets = nets
        self._threads = threads or os.cpu_count() or 1
        self._spinning = spinning
        self.runtime = resolve_runtime(runtime)
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()
        self._requests = threading.local()  # OpenVINO: an infer request per net and thread

    def _load(self, name: str):
        loaded = self._loaded.get(name)
        if loaded is None:
            with self._lock:
                loaded = self._loaded.get(name)
                if loaded is None:
                    loaded = self._loaded[name] = (self._openvino if self.runtime == "openvino" else self._ort)(name)
        return loaded

    def _ort(self, name: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self._nets[name].onnx_path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])

    def _openvino(self, name: str):
        import openvino as ov

        # f32 kept: the CPU plugin would otherwise pick bf16 on CPUs that have it, changing the faces.
        return ov.Core().compile_model(str(self._nets[name].onnx_path), "CPU", {
            "INFERENCE_NUM_THREADS": self._threads, "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY", "CPU_RUNTIME_CACHE_CAPACITY": OPENVINO_CACHE_ENTRIES})

    def __call__(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        net, loaded = self._nets[name], self._load(name)
        if self.runtime == "onnxruntime":
            return loaded.run(list(net.output_names), {net.input_name: batch})
        # An infer request serves one call at a time: one per thread (made on first use).
        requests = getattr(self._requests, "by_net", None)
        if requests is None:
            requests = self._requests.by_net = {}
        request = requests.get(name)
        if request is None:
            request = requests[name] = loaded.create_infer_request()
        # Outputs are copied out of the request (share_outputs=False), so its next run leaves them be.
        result = request.infer({net.input_name: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
        return [result[loaded.output(o)] for o in net.output_names]

    def describe(self) -> str:
        return f"{self.runtime} (CPU) in the server process"


class TritonNets:
    """The nets on Triton (each net a model of the repository), over gRPC with a deadline; with
    local_shared_memory (a Triton on this machine: the managed one) the inputs go through a system
    shared-memory region (faces/input_region.py) instead of inside the gRPC messages."""

    def __init__(self, url: str, nets: dict[str, DetectorNet], timeout_s: float, local_shared_memory: bool = False):
        import tritonclient.grpc as triton_grpc

        self._grpc = triton_grpc
        self.url = url
        self._nets = nets
        self._timeout_s = timeout_s
        self._client = triton_grpc.InferenceServerClient(url=url)
        self._region = None
        if local_shared_memory:
            from .input_region import InputRegion, remove_stale

            remove_stale()
            self._region = InputRegion(self._client)
        self._lock = threading.Lock()  # the region holds one batch at a time
        self._closed = False

    def __call__(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        from tritonclient.utils import InferenceServerException

        net = self._nets[name]
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        inp = self._grpc.InferInput(net.input_name, list(batch.shape), "FP32")
        outputs = [self._grpc.InferRequestedOutput(o) for o in net.output_names]
        with self._lock:
            if self._closed:
                raise Unavailable("the face detector's Triton client is closed (the server is stopping)")
            try:
                if self._region is None:
                    inp.set_data_from_numpy(batch)
                else:
                    inp.set_shared_memory(self._region.name, self._region.put(batch))
                result = self._infer(name, net, inp, outputs)
            except InferenceServerException as exc:
                raise Unavailable(f"Triton at {self.url} failed on {name}: {exc.message() or exc}") from exc
        arrays = [result.as_numpy(o) for o in net.output_names]
        if any(a is None or len(a) != len(batch) for a in arrays):
            raise Unavailable(f"Triton returned malformed {name} outputs; check the Python backend's numpy (<2)")
        return arrays

    def _infer(self, name: str, net: DetectorNet, inp, outputs):
        from tritonclient.utils import InferenceServerException

        try:
            return self._client.infer(name, [inp], outputs=outputs, model_version=net.version,
                                      client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            # A restarted Triton no longer knows the region: register it again, once.
            if self._region is None or "shared memory region" not in (exc.message() or ""):
                raise
            log.info("Triton forgot the input region %s; registering it again", self._region.name)
            self._region.register()
            return self._client.infer(name, [inp], outputs=outputs, model_version=net.version,
                                      client_timeout=self._timeout_s)

    def describe(self) -> str:
        return f"triton at {self.url}"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._region is not None:
                self._region.close()
        self._client.close()


class FailoverNets:
    """Triton while `use_primary()` says so (the embedding models' backend is Triton), else the
    local sessions. A Triton failure falls back at once and leaves Triton alone for `retry_s`
    (a Triton that serves the embedding models but not these nets costs one failed call)."""

    def __init__(self, primary: Callable[[str, np.ndarray], list[np.ndarray]] | None,
                 fallback: Callable[[str, np.ndarray], list[np.ndarray]] | None,
                 use_primary: Callable[[], bool] = lambda: True, retry_s: float = 30.0):
        self._primary = primary
        self._fallback = fallback
        self._use_primary = use_primary
        self._retry_s = retry_s
        self._failed_at: float | None = None
        self.fallbacks_taken = 0

    def __call__(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        if self._primary is not None and self._use_primary() and (
                self._failed_at is None or time.monotonic() - self._failed_at >= self._retry_s):
            try:
                out = self._primary(name, batch)
                self._failed_at = None
                return out
            except Unavailable as exc:
                if self._fallback is None:
                    raise
                if self._failed_at is None:
                    log.warning("face detector nets: Triton failed (%s); running them in-process", exc)
                self._failed_at = time.monotonic()
                self.fallbacks_taken += 1
        if self._fallback is None:
            raise Unavailable("the face detector's nets cannot run: Triton is not in use and the local "
                              "fallback is off (--fallback none)")
        return self._fallback(name, batch)
