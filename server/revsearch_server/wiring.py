"""The wiring seam: one factory builds the dependencies from settings, another the gRPC server
from settings plus dependencies. Nothing else chooses an implementation.

Tests pass their own parts through `Overrides` (a deterministic inference backend, a fake face
detector, another vector store) and get everything else built as in production.

Start-up order: models (fail fast with a clear message), inference (managed or external Triton,
else the local fallback), vector store (serving goes on while it is down: calls answer
UNAVAILABLE and health says so), then the domain services and use cases.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from revsearch.v1 import search_service_pb2 as pb

from .admission import Admission
from .catalog import Catalog
from .collection_service import Collections
from .config import Settings
from .embedding.base import InferenceBackend
from .embedding.embedder import Embedder
from .embedding.failover import FailoverBackend
from .copies import CopyDetector
from .encoder import Encoder
from .errors import FailedPrecondition, Unavailable
from .faces.cropper import FaceCropper, FaceDetector
from .imaging import ImageLimits
from .index.base import VectorStore
from .index.coalescer import SearchCoalescer
from .index.exact_knn import ExactKnnIndex
from .models import DetectorNet, ServedModels, detector_nets, load_models
from .observability import Metrics
from .pools import Pools
from .security.auth import Authenticator
from .security.keys import KeyFileError
from .security.tls import ServerTls, TlsError, TlsFiles
from .transport.calls import CallGuard, GuardLimits, service_handler
from .transport.servicer import SearchServicer
from .triton_managed import ManagedTriton
from .usecases.collections import ManageCollections
from .usecases.images import ImageSearch
from .usecases.imports import ImportVectors
from .usecases.items import ImageItems
from .usecases.server_info import DescribeServer
from .usecases.videos import VideoSearch
from .video.sampling import VideoLimits

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"]
SERVICE_NAME = SERVICE.full_name
# An external Triton gets a short look at start-up; a managed one gets its full start time.
EXTERNAL_TRITON_WAIT_S = 10.0


class StartupError(Exception):
    """A start-up problem the user can fix; the message says how."""


@dataclass
class Security:
    """TLS and API keys, as the settings ask; both re-read on SIGHUP."""
    tls: ServerTls | None = None
    auth: Authenticator | None = None

    def reload(self) -> None:
        if self.tls is not None:
            self.tls.reload()
        if self.auth is not None:
            self.auth.reload()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_security(s: Settings, metrics: Metrics) -> Security:
    """The TLS credentials and key ring; StartupError naming the file and the problem."""
    if bool(s.tls_cert) != bool(s.tls_key):
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    if s.tls_client_ca and not s.tls_enabled:
        raise StartupError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    try:
        tls = ServerTls(TlsFiles(Path(s.tls_cert), Path(s.tls_key), Path(s.tls_client_ca) if s.tls_client_ca else None)
                        ) if s.tls_enabled else None
        auth = Authenticator(Path(s.api_keys), metrics) if s.api_keys else None
    except (TlsError, KeyFileError) as exc:
        raise StartupError(str(exc)) from None
    exposed = not is_loopback(s.host)
    if auth is not None and tls is None and exposed and not s.allow_insecure_keys:
        raise StartupError(f"API keys without TLS on {s.host}: keys would cross the network in plaintext. Serve TLS "
                           "(--tls-cert/--tls-key), listen on a loopback address, or pass --allow-insecure-keys")
    if auth is None and exposed:
        log.warning("no API keys (--api-keys): anyone who reaches %s:%d can read, write and drop every collection",
                    s.host, s.port)
    if auth is not None:
        log.info("API keys from %s: %s", s.api_keys, ", ".join(auth.key_ids))
    return Security(tls, auth)


@dataclass
class Overrides:
    """Parts a caller supplies instead of the ones the settings choose."""
    # The only inference backend (no Triton, no fallback), e.g. a deterministic fake.
    inference: InferenceBackend | None = None
    # min_face_size -> detector; default detector_factory's MTCNN (made on first use).
    detector_for: Callable[[int], FaceDetector] | None = None
    vector_store: VectorStore | None = None


@dataclass
class Dependencies:
    """Everything the gRPC server needs, built and started; `close` releases it all."""
    settings: Settings
    metrics: Metrics
    pools: Pools
    models: ServedModels
    inference: FailoverBackend
    embedder: Embedder
    store: VectorStore
    store_ok: bool  # whether the store answered at start-up
    admission: Admission
    collections: ManageCollections
    images: ImageSearch
    videos: VideoSearch
    server_info: DescribeServer
    imports: ImportVectors
    items: ImageItems
    security: Security = field(default_factory=Security)
    triton: ManagedTriton | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)  # e.g. the detector's Triton client
    _closed: bool = field(default=False, repr=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.embedder.close()
        await self.store.close()
        for close in self.closers:
            await asyncio.to_thread(close)
        self.pools.shutdown()
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)


def mtcnn_detector(min_face_size: int) -> FaceDetector:
    """facenet-pytorch's MTCNN (torch): the fallback when the ONNX nets are not built."""
    from .faces.detector import DetectorSettings, MtcnnDetector  # torch loads only with a face collection

    # Confidence is filtered per collection by the cropper; the detector keeps every candidate.
    return MtcnnDetector(DetectorSettings(min_face_size=min_face_size, min_confidence=0.0))


def check_face_detector(s: Settings, nets: dict[str, DetectorNet]) -> None:
    """StartupError when --face-detector names a detector this server cannot run."""
    import importlib.util

    from .faces.onnx_mtcnn import NET_NAMES

    missing = [n for n in NET_NAMES if n not in nets]
    if s.face_detector == "onnx" and missing:
        raise StartupError(f"--face-detector onnx: MTCNN's ONNX nets ({', '.join(missing)}) are not in "
                           f"{s.model_repository}; build them with `python scripts/build_models.py --models mtcnn`")
    if s.face_net_runtime == "openvino" and importlib.util.find_spec("openvino") is None:
        raise StartupError("--face-net-runtime openvino: OpenVINO is not installed (it comes with requirements.txt: "
                           "`pip install -r requirements.txt`); use --face-net-runtime auto or onnxruntime")
    if s.face_detector == "torch" and importlib.util.find_spec("facenet_pytorch") is None:
        raise StartupError("--face-detector torch: facenet-pytorch is not installed (it comes with "
                           "requirements-build.txt); use --face-detector onnx or auto")


def detector_factory(s: Settings, inference: FailoverBackend, triton_url: str | None,
                     nets: dict[str, DetectorNet], closers: list[Callable[[], None]] | None = None
                     ) -> Callable[[int], FaceDetector]:
    """min_face_size -> face detector. MTCNN as ONNX (faces/onnx_mtcnn.py) when its three nets are in
    the model repository, run where the embedding models run (Triton while the inference backend is
    Triton, else in-process in the runtime of --face-net-runtime); else facenet-pytorch's MTCNN when
    torch is installed; else a detector whose every use answers FAILED_PRECONDITION saying what to
    build. closers: gets what must be closed with the server (the nets' Triton client)."""
    import importlib.util

    from .embedding.base import BackendKind
    from .faces.detector import DetectorSettings
    from .faces.onnx_mtcnn import NET_NAMES, OnnxMtcnnDetector

    missing = [n for n in NET_NAMES if n not in nets]
    build = "python scripts/build_models.py --models mtcnn"
    torch_installed = importlib.util.find_spec("facenet_pytorch") is not None
    check_face_detector(s, nets)
    if s.face_detector == "torch":
        log.info("face detection: facenet-pytorch's MTCNN (torch, in the server process), as asked")
        return mtcnn_detector
    if not missing:
        from .faces.net_runners import FailoverNets, LocalNets, TritonNets

        local = LocalNets(nets, runtime=s.face_net_runtime) if s.fallback == "local" or not s.triton_enabled else None
        # The managed Triton runs on this machine: the nets' inputs go through shared memory.
        remote = TritonNets(triton_url, nets, s.triton_timeout_s, local_shared_memory=s.managed_triton) \
            if triton_url else None
        if remote is not None and closers is not None:
            closers.append(remote.close)
        run = FailoverNets(remote, local, use_primary=lambda: inference.kind is BackendKind.TRITON)
        log.info("face detection: MTCNN as ONNX (%s)", " or ".join(
            r.describe() for r in (remote, local) if r is not None) or "no backend")
        return lambda min_face_size: OnnxMtcnnDetector(
            run, DetectorSettings(min_face_size=min_face_size, min_confidence=0.0))
    if torch_installed:
        log.warning("face detection: facenet-pytorch's MTCNN (torch); MTCNN's ONNX nets (%s) are not in %s "
                    "(`%s` builds them)", ", ".join(missing), s.model_repository, build)
        return mtcnn_detector
    reason = (f"face detection is not available: MTCNN's ONNX nets ({', '.join(missing)}) are not in "
              f"{s.model_repository} and facenet-pytorch is not installed; build the nets with `{build}` "
              "(needs requirements-build.txt) or use crop mode 'none'")
    log.warning("%s", reason)

    def unavailable(min_face_size: int) -> FaceDetector:
        raise FailedPrecondition(reason)

    return unavailable


async def build_dependencies(settings: Settings, metrics: Metrics, overrides: Overrides = Overrides()
                             ) -> Dependencies:
    s = settings
    security = build_security(s, metrics)  # before anything starts: a bad file stops start-up at once
    models = load_models(s.model_repository, s.allow_untrained)
    served = ServedModels.resolve(models, s.default_model)
    log.info("default model: %s (%s)", served.default, served.default_reason)
    nets = detector_nets(s.model_repository)
    check_face_detector(s, nets)  # before anything starts, as the security files
    pools = Pools.from_settings(s)
    triton = None
    try:
        inference, triton, triton_url = await _inference(s, models, pools, metrics, overrides.inference, nets)
        embedder = Embedder(inference, models, s.batch_max_size, s.batch_max_wait_ms / 1000, metrics)

        s.data_dir.mkdir(parents=True, exist_ok=True)
        store = overrides.vector_store or _milvus(s, pools)
        store_ok = True
        try:
            await store.start()
        except Unavailable as exc:
            store_ok = False
            log.error("vector store unreachable at start-up: %s", exc)
    except BaseException:
        pools.shutdown()
        if triton is not None:
            await asyncio.to_thread(triton.stop)
        raise

    limits = ImageLimits(max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)
    video_limits = VideoLimits(max_duration_s=s.max_video_duration_s, max_width=s.max_video_width,
                               max_height=s.max_video_height, max_frames=s.max_video_frames)
    admission = Admission(s.max_inflight_images, s.admission_wait_s, metrics)
    knn = lambda directory, dimension: ExactKnnIndex(directory, dimension, pools.store)  # noqa: E731
    collections = Collections(Catalog(store, s.data_dir / "exact_knn", knn), served)
    closers: list[Callable[[], None]] = []
    detector_for = overrides.detector_for or detector_factory(s, inference, triton_url, nets, closers)
    cropper = FaceCropper(pools.decode, pools.faces, detector_for, limits, metrics, s.face_image_max_side,
                          s.face_detect_batch_images)
    encoder = Encoder(embedder, cropper, pools.decode, limits, metrics)
    searcher = SearchCoalescer(s.search_batch_max_queries, metrics)
    return Dependencies(
        settings=s, metrics=metrics, pools=pools, models=served, inference=inference, embedder=embedder,
        store=store, store_ok=store_ok, admission=admission, triton=triton, security=security, closers=closers,
        collections=ManageCollections(collections, video_limits),
        images=ImageSearch(collections, encoder, searcher, admission, s.max_top_k, metrics,
                           CopyDetector(pools.decode, limits, metrics)),
        videos=VideoSearch(collections, encoder, admission, video_limits, s.video_frame_max_side, s.max_video_bytes,
                           s.max_top_k, pools.decode, metrics),
        server_info=DescribeServer(s, inference, served, store), imports=ImportVectors(collections),
        items=ImageItems(collections))


async def _inference(s: Settings, models: dict, pools: Pools, metrics: Metrics, only: InferenceBackend | None,
                     nets: dict[str, DetectorNet]) -> tuple[FailoverBackend, ManagedTriton | None, str | None]:
    """Triton (external or managed) with the local fallback, as the settings say; and Triton's
    address (None without one). A managed Triton also loads the face detector's nets."""
    from .embedding.local_onnx import LocalOnnxBackend
    from .embedding.triton import TritonBackend
    from .faces.net_runners import resolve_runtime

    if only is not None:
        backend = FailoverBackend(None, only, metrics=metrics)
        await backend.start(models, primary_wait_s=0.0)
        return backend, None, None
    primary, triton, wait_s, reason = None, None, min(EXTERNAL_TRITON_WAIT_S, s.triton_startup_timeout_s), ""
    if s.triton_enabled and not s.managed_triton:
        primary = TritonBackend(s.triton_url, s.triton_timeout_s)
    elif s.managed_triton:
        # MTCNN's nets in the runtime --face-net-runtime chooses (the one the local fallback uses too).
        triton = ManagedTriton(s.model_repository, s.data_dir / "triton", [*models, *nets],
                               runtimes=dict.fromkeys(nets, resolve_runtime(s.face_net_runtime)))
        try:
            url = await asyncio.to_thread(triton.start)
            primary = TritonBackend(url, s.triton_timeout_s, alive=triton.alive, log_hint=f"; see {triton.log_path}")
            wait_s = s.triton_startup_timeout_s
        except Unavailable as exc:
            reason = str(exc)
            log.error("managed Triton could not start: %s", exc)
    fallback = LocalOnnxBackend(pools.inference) if s.fallback == "local" or not s.triton_enabled else None
    backend = FailoverBackend(primary, fallback, reprobe_s=s.triton_reprobe_s, metrics=metrics)
    await backend.start(models, primary_wait_s=wait_s, no_primary_reason=reason)
    return backend, triton, primary.url if primary is not None else None


def _milvus(s: Settings, pools: Pools) -> VectorStore:
    from .index.milvus import MilvusStore

    uri = s.milvus_uri or str(s.milvus_lite_path.resolve())
    return MilvusStore(uri, s.milvus_token, s.milvus_timeout_s, s.milvus_consistency, pools.store, s.milvus_search_ef,
                       float16=s.milvus_float16)


def build_grpc_server(settings: Settings, deps: Dependencies, health_servicer: health.aio.HealthServicer
                      ) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with the search service, health (never behind a key) and reflection, bound
    (not started), with the transport limits of the settings."""
    s = settings
    options = [
        ("grpc.max_receive_message_length", s.max_receive_message_bytes),
        ("grpc.max_send_message_length", s.max_receive_message_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        # Soft and hard limit alike: between the two grpc refuses at random.
        ("grpc.max_metadata_size", s.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", s.max_metadata_bytes),
        # Pings without data more often than this are strikes; 2 strikes and the client gets GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", int(s.keepalive_min_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if s.max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * 1000))]
    server = grpc.aio.server(options=options)
    servicer = SearchServicer(deps.collections, deps.images, deps.videos, deps.server_info, s.index_batch_size,
                              deps.imports, deps.items)
    guard = CallGuard(deps.metrics, deps.security.auth,
                      GuardLimits(stream_idle_timeout_s=s.stream_idle_timeout_s, max_concurrent_rpcs=s.max_concurrent_rpcs))
    server.add_generic_rpc_handlers((service_handler(SERVICE, pb, servicer, guard),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if s.reflection_enabled:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{s.host}:{s.port}"
    tls = deps.security.tls
    try:
        port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address}: {exc} (--host/--port)") from None
    return server, port
