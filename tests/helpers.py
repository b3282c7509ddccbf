"""Shared test helpers: an in-process server in its own thread, synthetic images, LFW paths."""

from __future__ import annotations

import asyncio
import io
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from revsearch_server.app import RevsearchServer
from revsearch_server.config import Settings
from revsearch_server.wiring import Overrides

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
LFW = SHARED_DATA / "lfw"
VIDEO = SHARED_DATA / "video"
# Frames picked by eye: four guests in the audience (Hamilton clip), a street crowd at 1920x1080.
HAMILTON_CLIP, HAMILTON_FRAME = "face_recognition_short_hamilton_clip.mp4", 242
CROWD_CLIP, CROWD_FRAME = "facenet-pytorch_examples_video.mp4", 0


def base_settings(tmp_path: Path, **overrides) -> Settings:
    """Test server settings: ports 0 (gRPC and metrics), a private data dir, the untrained model allowed
    and the default model pinned to it (resnet50, 2048-d: the tests' expectations; the server's own
    default, auto, is tested in tests/service/test_copy_detection.py)."""
    defaults = dict(host="127.0.0.1", port=0, metrics_port=0, data_dir=tmp_path, allow_untrained=True,
                    triton_url="off", log_level="WARNING", default_model="resnet50")
    return replace(Settings(), **{**defaults, **overrides})


class ServerThread:
    """Runs a RevsearchServer on its own event loop in a thread, so tests can use the sync client."""

    def __init__(self, settings: Settings, overrides: Overrides = Overrides()):
        self.settings = settings
        self.server = RevsearchServer(settings, overrides)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=300)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def __exit__(self, *exc) -> None:
        try:
            self.run(self.server.stop(grace=1.0), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def synthetic_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A deterministic, textured RGB image; different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(0.01, 0.08, 3)
    base = np.stack([np.sin(xx * f[i] + yy * f[(i + 1) % 3] + rng.uniform(0, 6)) for i in range(3)], -1)
    noise = rng.normal(0, 0.15, (h, w, 3))
    return Image.fromarray(((base + noise + 1.5) * 85).clip(0, 255).astype(np.uint8), "RGB")


def lfw_images(count: int, per_person_max: int = 3) -> list[Path]:
    """A deterministic sample of LFW images, a few per person, sorted by path."""
    if not LFW.is_dir():
        raise FileNotFoundError(f"shared test data missing: {LFW}")
    picked: list[Path] = []
    for person in sorted(LFW.iterdir()):
        picked.extend(sorted(person.glob("*.jpg"))[:per_person_max])
        if len(picked) >= count:
            break
    return picked[:count]


def video_frame(name: str, index: int) -> np.ndarray:
    """Frame `index` of a clip in the shared video folder, as RGB uint8."""
    import cv2

    cap = cv2.VideoCapture(str(VIDEO / name))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    assert ok, f"could not read frame {index} of {name}"
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_old_collection(client, name: str, description: str, dimension: int, layout: int, rows: list[dict]) -> None:
    """A Milvus collection as an earlier release wrote it, with pymilvus: stored-row layout 1 (one
    JSON face column), 2 (face count and frame time columns too) or 3 (and local features), FLAT
    index, the given rows."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=80)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    for field, length in (("uri", 2048), ("sha256", 64), ("model", 128), ("model_version", 64)):
        schema.add_field(field, DataType.VARCHAR, max_length=length)
    schema.add_field("created_at_ms", DataType.INT64)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("face_box", DataType.JSON)
    if layout >= 2:
        schema.add_field("face_count", DataType.INT64)
        schema.add_field("timestamp_s", DataType.DOUBLE)
    if layout >= 3:
        schema.add_field("local_features", DataType.VARCHAR, max_length=65535)
    index = MilvusClient.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection("revsearch_" + name, schema=schema, index_params=index, consistency_level="Session")
    client.upsert("revsearch_" + name, data=rows)
