"""Server settings: read once from flags and REVSEARCH_* environment variables, then passed down.

Precedence: command-line flag > environment variable > default. Nothing else in the server
reads the environment.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

# The repository's model_repository, used when the server runs from a checkout.
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPOSITORY = _REPO_ROOT / "model_repository"


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 50051
    data_dir: Path = Path("data")
    # Empty: an embedded Milvus Lite file under data_dir.
    milvus_uri: str = ""
    milvus_token: str = ""
    milvus_timeout_s: float = 10.0
    # Session consistency gives read-your-writes to this process without Strong's wait.
    milvus_consistency: str = "Session"
    milvus_search_ef: int = 256
    # New compact copy-detection collections store float16 vectors where the store has them ("auto") or
    # float32 ("off"): Milvus Lite 2.5.1 searched 100k float16 vectors 5x slower than float32 (59 vs 12 ms).
    milvus_float16: str = "auto"
    # Empty: start a managed Triton from the nvidia-pytriton wheel. "off": no Triton at all.
    triton_url: str = ""
    triton_timeout_s: float = 30.0
    triton_startup_timeout_s: float = 180.0
    fallback: str = "local"
    # While on the fallback, Triton is tried again this often (seconds); a managed Triton that
    # exited is restarted by the health checks.
    triton_reprobe_s: float = 10.0
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    # "auto": resnet50 when it is served trained, else efficientnet_lite0 (models.resolve_default).
    default_model: str = "auto"
    allow_untrained: bool = False
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_top_k: int = 1000
    max_receive_message_bytes: int = 32 * 1024 * 1024
    # Bounded pool for decode and preprocessing (CPU-heavy, kept off the event loop); all pools
    # are made in pools.py.
    decode_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # Threads for the vector store's synchronous client calls (mostly waiting on I/O).
    store_workers: int = 4
    batch_max_size: int = 8
    batch_max_wait_ms: float = 2.0
    # Query vectors per coalesced index search (1: every search calls the index alone).
    search_batch_max_queries: int = 64
    # Items of an IndexImages stream processed together.
    index_batch_size: int = 16
    log_level: str = "INFO"
    # Videos: upload, length and frame-size limits; frames are shrunk to this long side before face
    # detection (faces of 20 px and more in a 720p frame stay findable, at a third of the cost).
    max_video_bytes: int = 512 * 1024 * 1024
    max_video_duration_s: float = 600.0
    max_video_width: int = 3840
    max_video_height: int = 2160
    max_video_frames: int = 64
    video_frame_max_side: int = 640
    face_image_max_side: int = 1600
    face_detect_batch_images: int = 64
    # MTCNN's nets in-process and on the managed Triton: "auto" is OpenVINO when installed.
    face_net_runtime: str = "auto"
    # "auto": MTCNN as ONNX when its nets are built, else facenet-pytorch's; "onnx" or "torch" insist.
    face_detector: str = "auto"
    # Backpressure: images decoded/embedded at once across all calls. Unary calls over the limit
    # get RESOURCE_EXHAUSTED with a retry-after-ms hint; streams wait up to admission_wait_s.
    max_inflight_images: int = 256
    admission_wait_s: float = 10.0
    # Prometheus metrics over HTTP on metrics_host:metrics_port; 0 picks a free port, -1 disables.
    # Loopback by default: the metrics name collections and key ids.
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    # Seconds between health checks of the vector store and the inference backend.
    health_interval_s: float = 5.0
    # Safe exposure (docs/security.md): TLS files (PEM), the API key file (TOML).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    api_keys: str = ""
    allow_insecure_keys: bool = False
    # Reflection: "auto" serves it without keys and hides it with keys; "on" / "off" decide.
    reflection: str = "auto"
    # Transport limits (each proven by tests/service/test_transport_limits.py).
    stream_idle_timeout_s: float = 30.0
    max_concurrent_rpcs: int = 512
    # Calls per connection. 100 refused calls of one busy client (RST_STREAM REFUSED_STREAM, UNAVAILABLE to
    # the caller): grpc counts a finished call's stream until its cleanup, so 64 callers on one channel got
    # 109 refusals in 8 s and 128 callers 7,819 (benchmarks/bench_scale.py); 512 = --max-concurrent-rpcs.
    max_concurrent_streams: int = 512
    # A client pinging more often than this (without data) is sent GOAWAY after 2 strikes.
    keepalive_min_interval_s: float = 10.0
    max_metadata_bytes: int = 16 * 1024
    # Connections are closed after this age (0: never), in-flight calls getting the grace period;
    # clients reconnect, so load spreads again over replicas behind a balancer.
    max_connection_age_s: float = 3600.0
    max_connection_age_grace_s: float = 30.0

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert or self.tls_key)

    @property
    def reflection_enabled(self) -> bool:
        return self.reflection == "on" or (self.reflection == "auto" and not self.api_keys)

    @property
    def milvus_lite_path(self) -> Path:
        return self.data_dir / "milvus.db"

    @property
    def uses_milvus_lite(self) -> bool:
        return not self.milvus_uri

    @property
    def managed_triton(self) -> bool:
        return self.triton_url == ""

    @property
    def triton_enabled(self) -> bool:
        return self.triton_url != "off"


def _env(name: str, default):
    raw = os.environ.get(f"REVSEARCH_{name.upper()}")
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, Path):
        return Path(raw)
    return type(default)(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the server flags; defaults come from REVSEARCH_* variables, then Settings."""
    d = Settings()
    a = parser.add_argument
    a("--host", default=_env("host", d.host), help="bind address (REVSEARCH_HOST)")
    a("--port", type=int, default=_env("port", d.port), help="gRPC port; 0 picks a free one")
    a("--data-dir", type=Path, default=_env("data_dir", d.data_dir),
      help="where the embedded Milvus file and exact-KNN collections live")
    a("--milvus-uri", default=_env("milvus_uri", d.milvus_uri),
      help="Milvus standalone/cluster URI (e.g. http://milvus:19530); empty: embedded Milvus Lite")
    a("--milvus-token", default=_env("milvus_token", d.milvus_token), help="Milvus token (user:password)")
    a("--milvus-timeout", dest="milvus_timeout_s", type=float,
      default=_env("milvus_timeout_s", d.milvus_timeout_s), help="deadline of each Milvus call, seconds")
    a("--milvus-consistency", choices=["Session", "Bounded", "Eventually", "Strong"],
      default=_env("milvus_consistency", d.milvus_consistency), help="consistency level of searches")
    a("--milvus-search-ef", type=int, default=_env("milvus_search_ef", d.milvus_search_ef),
      help="HNSW search breadth (ef) of collections created on a Milvus server before the vector index "
           "could be chosen (AUTOINDEX); newer collections carry their own (CreateCollection.vector_index)")
    a("--milvus-float16", choices=["auto", "on", "off"], default=_env("milvus_float16", d.milvus_float16),
      help="vectors of new compact copy-detection collections: auto: float16 on Milvus servers from 2.4 (half "
           "the vector bytes), float32 on Milvus Lite, whose float16 search is 4-5x slower (100k items: copy "
           "searches 197 vs 60 ms); on: float16 on Lite too (5,030 instead of 5,926 bytes an item); off: "
           "float32 everywhere")
    a("--triton-url", default=_env("triton_url", d.triton_url),
      help="Triton gRPC address host:port; empty: start a managed CPU Triton; 'off': no Triton")
    a("--triton-timeout", dest="triton_timeout_s", type=float,
      default=_env("triton_timeout_s", d.triton_timeout_s), help="deadline of each Triton call, seconds")
    a("--triton-startup-timeout", dest="triton_startup_timeout_s", type=float,
      default=_env("triton_startup_timeout_s", d.triton_startup_timeout_s))
    a("--fallback", choices=["local", "none"], default=_env("fallback", d.fallback),
      help="when Triton is unreachable: run the model in-process with ONNX Runtime, or answer UNAVAILABLE")
    a("--triton-reprobe-s", type=float, default=_env("triton_reprobe_s", d.triton_reprobe_s),
      help="while on the fallback, seconds between attempts to return to Triton")
    a("--model-repository", type=Path, default=_env("model_repository", d.model_repository))
    a("--default-model", default=_env("default_model", d.default_model),
      help="model of collections created without one; auto: resnet50 when trained, else efficientnet_lite0")
    a("--allow-untrained", action="store_true", default=_env("allow_untrained", d.allow_untrained),
      help="serve models built without pretrained weights (tests only: results are not meaningful)")
    a("--max-image-bytes", type=int, default=_env("max_image_bytes", d.max_image_bytes))
    a("--max-image-pixels", type=int, default=_env("max_image_pixels", d.max_image_pixels))
    a("--max-top-k", type=int, default=_env("max_top_k", d.max_top_k))
    a("--max-receive-message-bytes", type=int,
      default=_env("max_receive_message_bytes", d.max_receive_message_bytes))
    a("--decode-workers", type=int, default=_env("decode_workers", d.decode_workers))
    a("--store-workers", type=int, default=_env("store_workers", d.store_workers),
      help="threads for vector store calls (pymilvus is synchronous)")
    a("--batch-max-size", type=int, default=_env("batch_max_size", d.batch_max_size),
      help="largest inference batch gathered from concurrent requests")
    a("--batch-max-wait-ms", type=float, default=_env("batch_max_wait_ms", d.batch_max_wait_ms),
      help="longest wait for a batch to fill, milliseconds")
    a("--search-batch-max-queries", type=int,
      default=_env("search_batch_max_queries", d.search_batch_max_queries),
      help="most query vectors of concurrent searches sent to the index in one call (1: no coalescing)")
    a("--index-batch-size", type=int, default=_env("index_batch_size", d.index_batch_size))
    a("--log-level", default=_env("log_level", d.log_level))
    a("--max-video-bytes", type=int, default=_env("max_video_bytes", d.max_video_bytes))
    a("--max-video-duration-s", type=float, default=_env("max_video_duration_s", d.max_video_duration_s))
    a("--max-video-width", type=int, default=_env("max_video_width", d.max_video_width))
    a("--max-video-height", type=int, default=_env("max_video_height", d.max_video_height))
    a("--max-video-frames", type=int, default=_env("max_video_frames", d.max_video_frames))
    a("--video-frame-max-side", type=int, default=_env("video_frame_max_side", d.video_frame_max_side),
      help="sampled video frames are shrunk to this long side (pixels) before face detection and embedding")
    a("--face-detector", choices=["auto", "onnx", "torch"], default=_env("face_detector", d.face_detector),
      help="face detection: MTCNN as ONNX (its nets from the model repository, on Triton or in-process) or "
           "facenet-pytorch's MTCNN (torch, in the server; needs requirements-build.txt); auto: ONNX when its nets "
           "are built, else torch when installed; onnx or torch: refuse to start without it")
    a("--face-detect-batch-images", type=int,
      default=_env("face_detect_batch_images", d.face_detect_batch_images),
      help="face detection of calls that arrive while the detector is busy is joined into one detector call of up "
           "to this many images (a single call with more is not split); 1: each call detects alone")
    a("--face-net-runtime", choices=["auto", "openvino", "onnxruntime"],
      default=_env("face_net_runtime", d.face_net_runtime),
      help="runtime of MTCNN's nets, in the server's fallback and on the managed Triton: OpenVINO (f32, 1.5-2.2x "
           "ONNX Runtime's speed on these nets) or ONNX Runtime; auto: OpenVINO when it is installed")
    a("--face-image-max-side", type=int, default=_env("face_image_max_side", d.face_image_max_side),
      help="face collections: JPEGs at least twice this long side (pixels) are decoded at 1/2, 1/4 or 1/8 size by "
           "the JPEG decoder (the smallest that keeps this long side) and their faces found at that size (so a "
           "face must be min_face_size pixels there); boxes are reported in the sent image's pixels; 0: full size")
    a("--max-inflight-images", type=int, default=_env("max_inflight_images", d.max_inflight_images),
      help="images decoded and embedded at once over all calls (a video: its frames); unary calls beyond it get "
           "RESOURCE_EXHAUSTED with a retry-after-ms trailing metadata hint, streams wait for room")
    a("--admission-wait-s", type=float, default=_env("admission_wait_s", d.admission_wait_s),
      help="longest a stream (IndexImages, video uploads) waits for room before RESOURCE_EXHAUSTED, seconds")
    a("--metrics-port", type=int, default=_env("metrics_port", d.metrics_port),
      help="Prometheus metrics over HTTP on this port (same host as gRPC); 0 picks a free port, -1 disables")
    a("--metrics-host", default=_env("metrics_host", d.metrics_host),
      help="address of the metrics endpoint (default loopback: metrics name collections and key ids)")
    a("--tls-cert", default=_env("tls_cert", d.tls_cert), help="serve TLS with this PEM certificate (chain)")
    a("--tls-key", default=_env("tls_key", d.tls_key), help="the certificate's PEM private key")
    a("--tls-client-ca", default=_env("tls_client_ca", d.tls_client_ca),
      help="require client certificates signed by this PEM CA (mutual TLS)")
    a("--api-keys", default=_env("api_keys", d.api_keys),
      help="TOML file of API keys with roles, collection scopes and rates; re-read on SIGHUP")
    a("--allow-insecure-keys", action="store_true", default=_env("allow_insecure_keys", d.allow_insecure_keys),
      help="allow API keys without TLS on a non-loopback address (keys then cross the network in plaintext)")
    a("--reflection", choices=["auto", "on", "off"], default=_env("reflection", d.reflection),
      help="gRPC reflection: auto serves it unless API keys are on")
    a("--stream-idle-timeout", dest="stream_idle_timeout_s", type=float,
      default=_env("stream_idle_timeout_s", d.stream_idle_timeout_s),
      help="a stream that sends nothing for this many seconds ends with DEADLINE_EXCEEDED (0: no limit)")
    a("--max-concurrent-rpcs", type=int, default=_env("max_concurrent_rpcs", d.max_concurrent_rpcs),
      help="calls handled at once; more are answered RESOURCE_EXHAUSTED")
    a("--max-concurrent-streams", type=int, default=_env("max_concurrent_streams", d.max_concurrent_streams),
      help="HTTP/2 streams (calls) per connection")
    a("--keepalive-min-interval-s", type=float, default=_env("keepalive_min_interval_s", d.keepalive_min_interval_s),
      help="clients pinging more often are disconnected")
    a("--max-metadata-bytes", type=int, default=_env("max_metadata_bytes", d.max_metadata_bytes),
      help="largest request metadata (headers) accepted")
    a("--max-connection-age-s", type=float, default=_env("max_connection_age_s", d.max_connection_age_s),
      help="connections are closed after this many seconds (0: never); clients reconnect")
    a("--max-connection-age-grace-s", type=float,
      default=_env("max_connection_age_grace_s", d.max_connection_age_grace_s),
      help="seconds in-flight calls get to finish when their connection reaches its age")
    a("--health-interval-s", type=float, default=_env("health_interval_s", d.health_interval_s),
      help="seconds between health checks of Milvus and the inference backend (grpc.health.v1 status)")


def from_args(args: argparse.Namespace) -> Settings:
    names = {f for f in Settings.__dataclass_fields__}
    return Settings(**{k: v for k, v in vars(args).items() if k in names})


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="revsearch-server", description="revsearch gRPC server")
    add_arguments(parser)
    args = parser.parse_args(argv)
    # argparse checks the choices of values given as flags only, not of defaults, which a
    # REVSEARCH_* variable may have set: those are checked here, with the same kind of message.
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value not in action.choices:
            parser.error(f"argument {'/'.join(action.option_strings)}: invalid choice {value!r} from "
                         f"REVSEARCH_{action.dest.upper()} (choose from {', '.join(map(str, action.choices))})")
    return from_args(args)
