"""Every thread pool of the server, sized in this one place from the settings.

CPU-heavy and blocking work stays off the event loop, in bounded pools:
  decode     image decoding and preprocessing, video frame sampling (--decode-workers, default
             one per core)
  faces      face detection: one thread, so a batch of images is detected in one call instead of
             several calls fighting over two cores
  inference  the in-process ONNX Runtime fallback: one thread, each run using every core
  store      pymilvus's synchronous calls (--store-workers, default 4: they mostly wait on I/O)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import Settings


@dataclass(frozen=True)
class Pools:
    decode: ThreadPoolExecutor
    faces: ThreadPoolExecutor
    inference: ThreadPoolExecutor
    store: ThreadPoolExecutor

    @classmethod
    def from_settings(cls, settings: Settings) -> "Pools":
        return cls(decode=ThreadPoolExecutor(max(1, settings.decode_workers), thread_name_prefix="decode"),
                   faces=ThreadPoolExecutor(1, thread_name_prefix="faces"),
                   inference=ThreadPoolExecutor(1, thread_name_prefix="onnx-run"),
                   store=ThreadPoolExecutor(max(1, settings.store_workers), thread_name_prefix="store"))

    def shutdown(self) -> None:
        for pool in (self.decode, self.faces, self.inference, self.store):
            pool.shutdown(wait=False, cancel_futures=True)
