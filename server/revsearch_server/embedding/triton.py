"""NVIDIA Triton over gRPC (tritonclient.grpc.aio); every call carries a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from ..errors import Unavailable
from ..models import ModelSpec
from .base import BackendKind

log = logging.getLogger(__name__)

# Requests stay within the smallest max_batch_size of the repository's configs (resnet50: 32);
# Triton rejects larger ones.
MAX_REQUEST_BATCH = 32


class TritonBackend:
    kind = BackendKind.TRITON

    def __init__(self, url: str, timeout_s: float, alive: Callable[[], bool] | None = None,
                 log_hint: str = ""):
        self.url = url
        self._timeout_s = timeout_s
        # For a managed Triton: stop waiting as soon as its process has exited.
        self._alive = alive
        self._log_hint = log_hint
        self._client = triton_aio.InferenceServerClient(url=url)

    async def wait_ready(self, models: dict[str, ModelSpec], within_s: float) -> None:
        """Waits until Triton serves every model, or raises Unavailable after within_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        last_error = "not ready"
        while True:
            try:
                missing = [m for m in models
                           if not await self._client.is_model_ready(m, client_timeout=2.0)]
                if not missing:
                    return
                last_error = f"models not ready: {', '.join(missing)}"
            except InferenceServerException as exc:
                last_error = _reason(exc)
            if self._alive is not None and not self._alive():
                raise Unavailable(f"the managed Triton exited before serving ({last_error}){self._log_hint}")
            if loop.time() >= deadline:
                raise Unavailable(f"Triton at {self.url} is not serving ({last_error})")
            await asyncio.sleep(0.5)

    async def ping(self, timeout_s: float) -> bool:
        """Whether Triton answers as ready within timeout_s (the health check)."""
        if self._alive is not None and not self._alive():
            return False
        try:
            return bool(await self._client.is_server_ready(client_timeout=timeout_s))
        except InferenceServerException:
            return False

    async def embed(self, model: ModelSpec, images: np.ndarray, output: str = "") -> np.ndarray:
        if len(images) > MAX_REQUEST_BATCH:
            parts = [await self.embed(model, images[i:i + MAX_REQUEST_BATCH], output)
                     for i in range(0, len(images), MAX_REQUEST_BATCH)]
            return np.concatenate(parts)
        inp = triton_aio.InferInput(model.input_name, list(images.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(images))
        name = output or model.output_name
        out = triton_aio.InferRequestedOutput(name)
        try:
            result = await self._client.infer(
                model.name, [inp], outputs=[out], model_version=model.version,
                client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise Unavailable(f"Triton at {self.url} failed: {_reason(exc)}") from exc
        features = result.as_numpy(name)
        expected = (images.shape[0], model.dimension) if not output else (images.shape[0], model.copy_regions,
                                                                          model.dimension)
        if features is None or features.shape != expected:
            # Seen with numpy 2 in the Python backend's environment: a status OK but empty tensor.
            shape = None if features is None else features.shape
            raise Unavailable(f"Triton returned a malformed {name} tensor (shape {shape}); "
                              "check the Python backend's numpy (<2)")
        return features.astype(np.float32, copy=False)

    def describe(self) -> str:
        return f"triton at {self.url}"

    async def close(self) -> None:
        await self._client.close()


def _reason(exc: InferenceServerException) -> str:
    status = exc.status() or ""
    text = exc.message() or str(exc)
    return f"{status} {text}".strip()
