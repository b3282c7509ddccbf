"""ONNX Runtime on CPU inside the server process: the fallback when Triton is unreachable."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Executor

import numpy as np

from ..models import ModelSpec
from .base import BackendKind


def make_session(onnx_path, threads: int | None = None, spinning: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    # Spinning between operators measured about 30% faster for ResNet50 on 2 cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


class LocalOnnxBackend:
    kind = BackendKind.ONNXRUNTIME_LOCAL

    def __init__(self, runner: Executor, threads: int | None = None):
        """runner: one thread (pools.py), so batches run one after another, each using all
        intra-op threads, instead of several runs fighting over two cores."""
        self._threads = threads
        self._sessions: dict[str, object] = {}
        self._runner = runner

    async def wait_ready(self, models: dict[str, ModelSpec], within_s: float = 0.0) -> None:
        """Loads a session per model (the files are local: no waiting involved)."""
        loop = asyncio.get_running_loop()
        for spec in models.values():
            if spec.name not in self._sessions:
                # Face models and copy-detection models do not spin: face detection and local features
                # share the cores between their runs (as their Triton configs, which say what it measured).
                spinning = not spec.needs_face_crop and not spec.has_copy_descriptor
                self._sessions[spec.name] = await loop.run_in_executor(
                    self._runner, make_session, spec.onnx_path, self._threads, spinning)

    async def embed(self, model: ModelSpec, images: np.ndarray, output: str = "") -> np.ndarray:
        session = self._sessions[model.name]
        loop = asyncio.get_running_loop()
        name = output or model.output_name
        out = await loop.run_in_executor(
            self._runner, lambda: session.run([name], {model.input_name: images})[0])
        return np.asarray(out, dtype=np.float32)

    async def ping(self, timeout_s: float) -> bool:
        return True

    def describe(self) -> str:
        return "onnxruntime (CPU) in the server process"

    async def close(self) -> None:
        self._sessions.clear()
