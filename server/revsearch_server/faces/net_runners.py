"""Runs the face detector's nets (faces/onnx_mtcnn.py's `run(net, batch) -> outputs`), blocking,
from the faces worker thread: ONNX Runtime in this process, Triton, or Triton with the local one
as its fallback.

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


class LocalNets:
    """ONNX Runtime sessions of the nets, made on first use."""

    def __init__(self, nets: dict[str, DetectorNet], threads: int | None = None, spinning: bool = False):
        """spinning off by default: between the nets' short runs the worker does numpy work, and
        spinning ORT threads would take those cores from it and from the embedding runs."""
        self._nets = nets
        self._threads = threads or os.cpu_count() or 1
        self._spinning = spinning
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def _session(self, name: str):
        session = self._sessions.get(name)
        if session is None:
            import onnxruntime as ort

            with self._lock:
                session = self._sessions.get(name)
                if session is None:
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = self._threads
                    opts.inter_op_num_threads = 1
                    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spinning else "0")
                    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    session = self._sessions[name] = ort.InferenceSession(
                        str(self._nets[name].onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        return session

    def __call__(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        net = self._nets[name]
        return self._session(name).run(list(net.output_names), {net.input_name: batch})

    def describe(self) -> str:
        return "onnxruntime (CPU) in the server process"


class TritonNets:
    """The nets on Triton (each net a model of the repository), over gRPC with a deadline."""

    def __init__(self, url: str, nets: dict[str, DetectorNet], timeout_s: float):
        import tritonclient.grpc as triton_grpc

        self._grpc = triton_grpc
        self.url = url
        self._nets = nets
        self._timeout_s = timeout_s
        self._client = triton_grpc.InferenceServerClient(url=url)

    def __call__(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        from tritonclient.utils import InferenceServerException

        net = self._nets[name]
        inp = self._grpc.InferInput(net.input_name, list(batch.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        outputs = [self._grpc.InferRequestedOutput(o) for o in net.output_names]
        try:
            result = self._client.infer(name, [inp], outputs=outputs, model_version=net.version,
                                        client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise Unavailable(f"Triton at {self.url} failed on {name}: {exc.message() or exc}") from exc
        arrays = [result.as_numpy(o) for o in net.output_names]
        if any(a is None or len(a) != len(batch) for a in arrays):
            raise Unavailable(f"Triton returned malformed {name} outputs; check the Python backend's numpy (<2)")
        return arrays

    def describe(self) -> str:
        return f"triton at {self.url}"

    def close(self) -> None:
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
