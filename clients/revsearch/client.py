"""A small client library over the generated stubs, sync (SearchClient) and asyncio
(AsyncSearchClient), with typed errors and a deadline on every call.

    with SearchClient("localhost:50051") as c:
        c.create_collection("photos", exist_ok=True)
        for r in c.index_images("photos", [ImageInput.from_path("a.jpg")]):
            print(r.status, r.id)
        hits = c.search("photos", image=open("q.jpg", "rb").read()).hits

A server that serves TLS and wants an API key takes a Security (or Security.from_env(), which reads
the REVSEARCH_TLS* and REVSEARCH_API_KEY variables):

    SearchClient("search.example:50051", security=Security(ca="ca.pem", api_key="..."))
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import struct_pb2

from .errors import from_rpc_error
from .names import CROP_MODES, INDEX_BACKENDS, MEDIA_TYPES, RANKINGS, SAMPLING_MODES, VECTOR_INDEX_TYPES
from .v1 import search_service_pb2 as pb
from .v1 import search_service_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]

# The environment variables Security.from_env reads; the CLI's flags default from the same ones.
ENV_TLS = "REVSEARCH_TLS"
ENV_TLS_CA = "REVSEARCH_TLS_CA"
ENV_TLS_CERT = "REVSEARCH_TLS_CERT"
ENV_TLS_KEY = "REVSEARCH_TLS_KEY"
ENV_TLS_SERVER_NAME = "REVSEARCH_TLS_SERVER_NAME"
ENV_API_KEY = "REVSEARCH_API_KEY"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def parse_flag(value: str, name: str = ENV_TLS) -> bool:
    """1/true/yes/on or 0/false/no/off (any case; empty is off); anything else is an error naming `name`."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(f"{name}={value!r}: use 1/true/yes/on or 0/false/no/off")


# What each file must hold, checked when a Security is made: a swapped --tls-cert/--tls-key or a
# passphrase-protected key would otherwise surface only as a failed handshake (UNAVAILABLE) on the first call.
_PEM_KINDS = {"ca": ("TLS CA file", b"CERTIFICATE-----"), "cert": ("TLS client certificate", b"CERTIFICATE-----"),
              "key": ("TLS client key", b"PRIVATE KEY-----")}


def _read_pem(path: Path, setting: str) -> bytes:
    what, marker = _PEM_KINDS[setting]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ValueError(f"{what} {str(path)!r} does not hold a PEM {marker[:-5].decode().lower()}")
    if setting == "key" and b"ENCRYPTED" in data:
        raise ValueError(f"{what} {str(path)!r} is encrypted; gRPC needs the key without a passphrase")
    return data


@dataclass(frozen=True)
class Security:
    """How to reach a server: TLS (`ca`: the CA file that signed the server's certificate, None for the system's
    roots), mutual TLS (`cert` and `key`: this client's certificate and key), `server_name` when the certificate
    names another host than the address dialled, and `api_key`, sent on every call as `authorization: Bearer`.

    Any of ca, cert, key or server_name turns TLS on. The files are checked when a Security is made (a clear
    ValueError naming the file) and read again when a channel is opened, so a renewed certificate is picked up by
    the next client. The key never appears in repr() or in an error message.
    """

    tls: bool = False
    ca: Path | str | None = None
    cert: Path | str | None = None
    key: Path | str | None = None
    server_name: str | None = None
    api_key: str | None = None

    def __post_init__(self):
        # Empty strings (an unset flag, an empty variable) mean "not given"; paths become Paths.
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            object.__setattr__(self, name, Path(value).expanduser() if value not in (None, "") else None)
        for name in ("server_name", "api_key"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(f"mutual TLS needs both a client certificate and its key: {given} "
                             f"{str(getattr(self, given))!r} was given without a {missing}")
        if self.ca or self.cert or self.server_name:
            object.__setattr__(self, "tls", True)
        for name in ("ca", "cert", "key"):
            if getattr(self, name) is not None:
                _read_pem(getattr(self, name), name)
        # gRPC accepts only printable ASCII in a text header, and the server splits "Bearer <key>" on a space.
        if self.api_key is not None and not all("!" <= ch <= "~" for ch in self.api_key):
            raise ValueError("the API key must be printable ASCII without spaces or newlines")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in ("tls", "ca", "cert", "key", "server_name"))
        return f"Security({shown}, api_key={'<hidden>' if self.api_key else None})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Security":
        """From REVSEARCH_TLS (1/true/yes/on), REVSEARCH_TLS_CA, REVSEARCH_TLS_CERT, REVSEARCH_TLS_KEY,
        REVSEARCH_TLS_SERVER_NAME and REVSEARCH_API_KEY; unset or empty variables mean "not given"."""
        env = os.environ if environ is None else environ
        key = env.get(ENV_API_KEY, "").strip()  # a key pasted into a file often brings a newline
        return cls(tls=parse_flag(env.get(ENV_TLS, ""), ENV_TLS), ca=env.get(ENV_TLS_CA) or None,
                   cert=env.get(ENV_TLS_CERT) or None, key=env.get(ENV_TLS_KEY) or None,
                   server_name=env.get(ENV_TLS_SERVER_NAME) or None, api_key=key or None)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The TLS credentials (CA None: the system's root certificates); only for a TLS Security."""
        if not self.tls:
            raise ValueError("a plaintext Security has no channel credentials")
        read = lambda name: _read_pem(getattr(self, name), name) if getattr(self, name) else None  # noqa: E731
        return grpc.ssl_channel_credentials(root_certificates=read("ca"), private_key=read("key"),
                                            certificate_chain=read("cert"))

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options beyond the message sizes: the name to check the server's certificate against."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.tls and self.server_name else []

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call sends: the API key as `authorization: Bearer <key>`, or nothing."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


# A `dns:///host:port` target names every replica behind one name (a Kubernetes headless Service, several
# A records), an `ipv4:a:p,b:p` target lists them: calls go round-robin over all of them instead of
# gRPC's default, the first address only.
_ROUND_ROBIN = ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}')
_MANY_ADDRESSES = ("dns:", "ipv4:", "ipv6:")


def channel_options(target: str, security: Security) -> list[tuple[str, str]]:
    """The channel's options: message limits, TLS name override, round-robin for targets that name
    several addresses (dns:, ipv4:, ipv6:)."""
    return (_CHANNEL_OPTIONS + security.channel_options()
            + ([_ROUND_ROBIN] if target.startswith(_MANY_ADDRESSES) else []))


def _open_channel(target: str, security: Security, aio: bool):
    transport = grpc.aio if aio else grpc
    options = channel_options(target, security)
    if security.tls:
        return transport.secure_channel(target, security.channel_credentials(), options=options)
    return transport.insecure_channel(target, options=options)


class _AuthorizedStub:
    """The generated stub with the call metadata bound to every method. The clients make every call through
    their stub, so this is the one place the API key is added, for unary and streaming calls, sync and asyncio
    alike; an interceptor would do the same but wrap each asyncio call in one more call object (overhead the
    load tester would measure as its own)."""

    def __init__(self, stub: pb_grpc.SearchServiceStub, metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not a method; and no recursion while _stub is unset (copy, pickle)
            raise AttributeError(name)
        method = getattr(self._stub, name)
        metadata = self._metadata

        def call(request, **kwargs):
            return method(request, metadata=metadata, **kwargs)

        call.__name__ = name
        setattr(self, name, call)  # later lookups find it without __getattr__
        return call

    def __repr__(self) -> str:  # never the metadata: it holds the key
        return "<SearchServiceStub with authorization>"


def _stub(channel, security: Security):
    stub = pb_grpc.SearchServiceStub(channel)
    metadata = security.call_metadata()
    return _AuthorizedStub(stub, metadata) if metadata else stub


@dataclass
class ImageInput:
    """One image to index: its bytes, and optionally its uri, id and metadata."""

    image: bytes
    uri: str = ""
    id: str = ""
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_path(cls, path: str | Path, **kwargs) -> "ImageInput":
        return cls(image=Path(path).read_bytes(), uri=kwargs.pop("uri", str(path)), **kwargs)

    def to_pb(self) -> pb.ImageItem:
        item = pb.ImageItem(id=self.id, uri=self.uri, image=self.image)
        if self.metadata:
            item.metadata.update(self.metadata)
        return item


@dataclass
class VectorInput:
    """One item to import: its id, its vector (computed elsewhere with the collection's model), and
    optionally its uri and metadata."""

    id: str
    vector: "np.ndarray | list[float]"
    uri: str = ""
    metadata: dict = field(default_factory=dict)

    def to_pb(self) -> pb.VectorItem:
        values = self.vector.tolist() if isinstance(self.vector, np.ndarray) else [float(v) for v in self.vector]
        item = pb.VectorItem(id=self.id, uri=self.uri, vector=pb.Vector(values=values))
        if self.metadata:
            item.metadata.update(self.metadata)
        return item


IMPORT_ITEMS_PER_MESSAGE = 1000


def _import_requests(collection: str, model: str, model_version: str, items: Iterable[VectorInput],
                     per_message: int, on_sent=None) -> Iterator[pb.ImportVectorsRequest]:
    """The header with the first items, then per_message items a message; on_sent(n) after each."""
    header = pb.ImportVectorsHeader(collection=collection, model=model, model_version=model_version)
    batch: list[pb.VectorItem] = []
    first = True
    for item in items:
        batch.append(item.to_pb())
        if len(batch) >= per_message:
            yield pb.ImportVectorsRequest(header=header if first else None, items=batch)
            first = False
            if on_sent:
                on_sent(len(batch))
            batch = []
    if batch or first:
        yield pb.ImportVectorsRequest(header=header if first else None, items=batch)
        if on_sent and batch:
            on_sent(len(batch))


def _vector_index(options: dict) -> pb.VectorIndexOptions:
    """{"type": "hnsw", "hnsw_m": 32, "search_breadth": 64, ...}: unset keys take the server's defaults."""
    options = dict(options)
    kind = str(options.pop("type", "") or "").upper()
    if kind and kind not in VECTOR_INDEX_TYPES:
        raise ValueError(f"vector index type {kind!r}: use one of {', '.join(VECTOR_INDEX_TYPES)}")
    return pb.VectorIndexOptions(type=VECTOR_INDEX_TYPES[kind] if kind else pb.VECTOR_INDEX_TYPE_UNSPECIFIED,
                                 **options)


def _create_request(name, model, crop_mode, index_backend, description, exist_ok,
                    face_options: dict | None, media_type: str = "image",
                    video_sampling: dict | None = None, vector_index: dict | None = None,
                    filter_keys: Iterable[str] = ()) -> pb.CreateCollectionRequest:
    req = pb.CreateCollectionRequest(
        name=name, model=model, crop_mode=CROP_MODES[crop_mode] if crop_mode else pb.CROP_MODE_UNSPECIFIED,
        index_backend=INDEX_BACKENDS[index_backend], description=description, exist_ok=exist_ok,
        media_type=MEDIA_TYPES[media_type], filter_keys=list(filter_keys))
    if video_sampling is not None:  # keys: frames, mode ("uniform" | "jitter" | "scene"), seed
        req.video_sampling.CopyFrom(_sampling(video_sampling.get("frames"), video_sampling.get("mode"),
                                              video_sampling.get("seed")))
    if face_options is not None:  # keys as in pb.FaceOptions, e.g. {"max_faces": 8, "min_face_size": 40}
        req.face_options.CopyFrom(pb.FaceOptions(**face_options))
    if vector_index is not None:  # keys as in pb.VectorIndexOptions, type by name: {"type": "hnsw", "hnsw_m": 32}
        req.vector_index.CopyFrom(_vector_index(vector_index))
    return req


VIDEO_CHUNK_BYTES = 1024 * 1024


def _sampling(frames: int | None, mode: str | None, seed: int | None) -> pb.VideoSampling:
    msg = pb.VideoSampling(mode=SAMPLING_MODES[mode] if mode else pb.SAMPLING_MODE_UNSPECIFIED, seed=seed or 0)
    if frames is not None:
        msg.frames = frames
    return msg


def _file_chunks(source: str | Path | bytes, chunk_bytes: int) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray)):
        for i in range(0, len(source), chunk_bytes):
            yield bytes(source[i:i + chunk_bytes])
        return
    with open(source, "rb") as f:
        while chunk := f.read(chunk_bytes):
            yield chunk


def _video_size(source: str | Path | bytes) -> int:
    return len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size


def _batch_request(collection: str, queries: Iterable, top_k: int | None, search_breadth: int | None = None,
                   filter: str = "", min_score: float | None = None) -> pb.BatchSearchImagesRequest:
    """queries: image bytes, vectors (sequences of floats) or dicts with one of "image", "vector",
    "item_id" and optionally their own "filter", mixed freely. filter: every other query's."""
    req = pb.BatchSearchImagesRequest(collection=collection, filter=filter)
    if search_breadth is not None:
        req.search_breadth = search_breadth
    if min_score is not None:
        req.min_score = min_score
    for q in queries:
        item = req.queries.add()
        if isinstance(q, dict):
            item.filter = q.get("filter", "")
            if "item_id" in q:
                item.item_id = q["item_id"]
            elif "image" in q:
                item.image = bytes(q["image"])
            else:
                item.vector.values.extend(float(v) for v in q["vector"])
        elif isinstance(q, (bytes, bytearray)):
            item.image = bytes(q)
        else:
            item.vector.values.extend(float(v) for v in q)
    if top_k is not None:
        req.top_k = top_k
    return req


def _search_request(collection, image, vector, item_id, top_k, copy_detection: bool | None = None,
                    search_breadth: int | None = None, filter: str = "", min_score: float | None = None
                    ) -> pb.SearchImagesRequest:
    """copy_detection None: the collection's setting (on for copy-detection collections); search_breadth
    None: the collection's (its vector index's ef / nprobe / search_list); filter: AIP-160 over
    metadata.<key>, uri, id, create_time ("": every item); min_score: hits below it are left out."""
    req = pb.SearchImagesRequest(collection=collection, filter=filter)
    if min_score is not None:
        req.min_score = min_score
    if search_breadth is not None:
        req.search_breadth = search_breadth
    if copy_detection is not None:
        req.copy_detection = copy_detection
    if image is not None:
        req.image = image
    elif vector is not None:
        req.vector.values.extend(float(v) for v in vector)
    elif item_id is not None:
        req.item_id = item_id
    if top_k is not None:
        req.top_k = top_k
    return req


def _update_request(collection: str, updates: Iterable[dict], update_mask: Iterable[str] = ()
                    ) -> pb.UpdateImagesRequest:
    """updates: {"id": ..., "metadata": {...}, "uri": ...} each; update_mask: AIP-134 paths ("metadata",
    "metadata.<key>", "uri"; empty: the metadata replaced, and the uri where one is given)."""
    req = pb.UpdateImagesRequest(collection=collection)
    for u in updates:
        item = req.updates.add(id=u["id"], uri=u.get("uri", ""))
        item.metadata.update(u.get("metadata") or {})
    req.update_mask.paths.extend(update_mask)
    return req


def _list_request(collection: str, filter: str, page_size: int, page_token: str, include_vectors: bool
                  ) -> pb.ListImagesRequest:
    return pb.ListImagesRequest(collection=collection, filter=filter, page_size=page_size, page_token=page_token,
                                include_vectors=include_vectors)


def _index_requests(collection: str, items: Iterable[ImageInput]) -> Iterator[pb.IndexImagesRequest]:
    for n, item in enumerate(items):
        yield pb.IndexImagesRequest(collection=collection if n == 0 else "", item=item.to_pb())


def _typed_errors(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return wrapper


class SearchClient:
    """Blocking client. Every call takes `timeout` (seconds); the default is the client's. `security`: TLS,
    mutual TLS and the API key (None: plaintext, no key)."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float = DEFAULT_TIMEOUT_S,
                 security: Security | None = None):
        self.target = target
        self.timeout = timeout
        self.security = security or Security()
        self._channel = _open_channel(target, self.security, aio=False)
        self._stub = _stub(self._channel, self.security)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._channel.close()

    @_typed_errors
    def info(self, timeout: float | None = None) -> pb.GetServerInfoResponse:
        return self._stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=timeout or self.timeout)

    @_typed_errors
    def create_collection(self, name: str, model: str = "", crop_mode: str | None = None,
                          index_backend: str = "milvus", description: str = "", exist_ok: bool = False,
                          face_options: dict | None = None, media_type: str = "image",
                          video_sampling: dict | None = None, timeout: float | None = None,
                          vector_index: dict | None = None, filter_keys: Iterable[str] = ()
                          ) -> pb.CreateCollectionResponse:
        """crop_mode None: the server's default (whole image; every face for video collections).
        vector_index: e.g. {"type": "hnsw", "hnsw_m": 32, "search_breadth": 64}; None: the store's default.
        filter_keys: top-level metadata keys whose string values get a column of their own (faster filters)."""
        return self._stub.CreateCollection(
            _create_request(name, model, crop_mode, index_backend, description, exist_ok, face_options,
                            media_type, video_sampling, vector_index, filter_keys),
            timeout=timeout or self.timeout)

    @_typed_errors
    def list_collections(self, timeout: float | None = None) -> list[pb.Collection]:
        return list(self._stub.ListCollections(pb.ListCollectionsRequest(),
                                               timeout=timeout or self.timeout).collections)

    @_typed_errors
    def describe_collection(self, name: str, timeout: float | None = None) -> pb.Collection:
        return self._stub.DescribeCollection(pb.DescribeCollectionRequest(name=name),
                                             timeout=timeout or self.timeout).collection

    @_typed_errors
    def drop_collection(self, name: str, timeout: float | None = None) -> None:
        self._stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=timeout or self.timeout)

    @_typed_errors
    def index_video(self, collection: str, video: str | Path | bytes, id: str = "", uri: str | None = None,
                    metadata: dict | None = None, frames: int | None = None, mode: str | None = None,
                    seed: int | None = None, chunk_bytes: int = VIDEO_CHUNK_BYTES,
                    timeout: float | None = None) -> pb.IndexVideoResponse:
        """Uploads a video file (path or bytes) in chunks and indexes it."""
        header = pb.VideoHeader(collection=collection, id=id, sampling=_sampling(frames, mode, seed),
                                uri=uri if uri is not None else ("" if isinstance(video, bytes) else str(video)),
                                size_bytes=_video_size(video))
        if metadata:
            header.metadata.update(metadata)

        def requests():
            yield pb.IndexVideoRequest(header=header)
            for chunk in _file_chunks(video, chunk_bytes):
                yield pb.IndexVideoRequest(chunk=chunk)

        return self._stub.IndexVideo(requests(), timeout=timeout or self.timeout)

    @_typed_errors
    def search_videos(self, collection: str, clip: str | Path | bytes | None = None, image: bytes | None = None,
                      top_k: int | None = None, ranking: str = "frames", frames: int | None = None,
                      mode: str | None = None, seed: int | None = None, chunk_bytes: int = VIDEO_CHUNK_BYTES,
                      timeout: float | None = None, filter: str = "", min_score: float | None = None
                      ) -> pb.SearchVideosResponse:
        """Searches a video collection with a query clip (path or bytes, uploaded in chunks) or an image."""
        if (clip is None) == (image is None):
            raise ValueError("give exactly one of clip or image")
        header = pb.SearchVideosHeader(collection=collection, ranking=RANKINGS[ranking],
                                       sampling=_sampling(frames, mode, seed), image=image or b"", filter=filter)
        if min_score is not None:
            header.min_score = min_score
        if top_k is not None:
            header.top_k = top_k

        def requests():
            yield pb.SearchVideosRequest(header=header)
            if clip is not None:
                for chunk in _file_chunks(clip, chunk_bytes):
                    yield pb.SearchVideosRequest(chunk=chunk)

        return self._stub.SearchVideos(requests(), timeout=timeout or self.timeout)

    def index_images(self, collection: str, items: Iterable[ImageInput],
                     timeout: float | None = None) -> Iterator[pb.IndexImagesResponse]:
        """Streams items; yields one response per item in order. `timeout` bounds the whole stream."""
        try:
            yield from self._stub.IndexImages(_index_requests(collection, items), timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def index_image(self, collection: str, item: ImageInput, timeout: float | None = None) -> pb.IndexImagesResponse:
        return next(iter(self.index_images(collection, [item], timeout=timeout or self.timeout)))

    @_typed_errors
    def search(self, collection: str, image: bytes | None = None, vector=None, item_id: str | None = None,
               top_k: int | None = None, timeout: float | None = None, copy_detection: bool | None = None,
               search_breadth: int | None = None, filter: str = "", min_score: float | None = None
               ) -> pb.SearchImagesResponse:
        return self._stub.SearchImages(_search_request(collection, image, vector, item_id, top_k, copy_detection,
                                                       search_breadth, filter, min_score),
                                       timeout=timeout or self.timeout)

    @_typed_errors
    def batch_search(self, collection: str, queries: Iterable, top_k: int | None = None,
                     timeout: float | None = None, search_breadth: int | None = None, filter: str = "",
                     min_score: float | None = None) -> pb.BatchSearchImagesResponse:
        """Many searches in one call; queries: image bytes, vectors or dicts ({"item_id": id}, with an
        optional "filter" of their own). Each result has its hits or its own error."""
        return self._stub.BatchSearchImages(_batch_request(collection, queries, top_k, search_breadth, filter,
                                                           min_score), timeout=timeout or self.timeout)

    @_typed_errors
    def get_images(self, collection: str, ids: list[str], include_vectors: bool = False,
                   timeout: float | None = None) -> pb.GetImagesResponse:
        return self._stub.GetImages(pb.GetImagesRequest(collection=collection, ids=ids, include_vectors=include_vectors),
                                    timeout=timeout or self.timeout)

    @_typed_errors
    def list_images(self, collection: str, filter: str = "", page_size: int = 0, page_token: str = "",
                    include_vectors: bool = False, timeout: float | None = None) -> pb.ListImagesResponse:
        """One page; pass next_page_token back as page_token (iter_images does it for you)."""
        return self._stub.ListImages(_list_request(collection, filter, page_size, page_token, include_vectors),
                                     timeout=timeout or self.timeout)

    def iter_images(self, collection: str, filter: str = "", page_size: int = 1000, include_vectors: bool = False,
                    timeout: float | None = None) -> Iterator[pb.Image]:
        """Every item that matches, page after page, in id order."""
        token = ""
        while True:
            page = self.list_images(collection, filter, page_size, token, include_vectors, timeout)
            yield from page.images
            token = page.next_page_token
            if not token:
                return

    @_typed_errors
    def update_images(self, collection: str, updates: Iterable[dict], update_mask: Iterable[str] = (),
                      timeout: float | None = None) -> pb.UpdateImagesResponse:
        """New metadata (and uri) for stored items without re-embedding: see _update_request."""
        return self._stub.UpdateImages(_update_request(collection, updates, update_mask),
                                       timeout=timeout or self.timeout)

    @_typed_errors
    def import_vectors(self, collection: str, items: Iterable[VectorInput], model: str, model_version: str,
                       per_message: int = IMPORT_ITEMS_PER_MESSAGE, on_sent=None, timeout: float | None = None
                       ) -> pb.ImportVectorsResponse:
        """Imports precomputed vectors (ImportVectors): model and model_version are what the vectors were
        computed with and must be the collection's. Items stream per_message at a time; on_sent(n) is
        called after each message. Running the same import again stores only what is missing.
        timeout: None waits as long as the import takes (not the client's per-call default)."""
        return self._stub.ImportVectors(_import_requests(collection, model, model_version, items, per_message,
                                                         on_sent), timeout=timeout)

    @_typed_errors
    def embed(self, image: bytes, model: str = "", collection: str = "",
              timeout: float | None = None) -> pb.EmbedImageResponse:
        return self._stub.EmbedImage(pb.EmbedImageRequest(image=image, model=model, collection=collection),
                                     timeout=timeout or self.timeout)

    @_typed_errors
    def delete(self, collection: str, ids: list[str], timeout: float | None = None) -> pb.DeleteImagesResponse:
        return self._stub.DeleteImages(pb.DeleteImagesRequest(collection=collection, ids=ids),
                                       timeout=timeout or self.timeout)


def _async_typed_errors(method):
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return wrapper


class AsyncSearchClient:
    """asyncio client (grpc.aio) with the same calls and `security` as SearchClient."""

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float = DEFAULT_TIMEOUT_S,
                 security: Security | None = None):
        self.target = target
        self.timeout = timeout
        self.security = security or Security()
        self._channel = _open_channel(target, self.security, aio=True)
        self._stub = _stub(self._channel, self.security)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @_async_typed_errors
    async def info(self, timeout: float | None = None) -> pb.GetServerInfoResponse:
        return await self._stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=timeout or self.timeout)

    @_async_typed_errors
    async def create_collection(self, name: str, model: str = "", crop_mode: str | None = None,
                                index_backend: str = "milvus", description: str = "", exist_ok: bool = False,
                                face_options: dict | None = None, media_type: str = "image",
                                video_sampling: dict | None = None, timeout: float | None = None,
                                vector_index: dict | None = None, filter_keys: Iterable[str] = ()
                                ) -> pb.CreateCollectionResponse:
        return await self._stub.CreateCollection(
            _create_request(name, model, crop_mode, index_backend, description, exist_ok, face_options,
                            media_type, video_sampling, vector_index, filter_keys),
            timeout=timeout or self.timeout)

    @_async_typed_errors
    async def list_collections(self, timeout: float | None = None) -> list[pb.Collection]:
        resp = await self._stub.ListCollections(pb.ListCollectionsRequest(), timeout=timeout or self.timeout)
        return list(resp.collections)

    @_async_typed_errors
    async def describe_collection(self, name: str, timeout: float | None = None) -> pb.Collection:
        resp = await self._stub.DescribeCollection(pb.DescribeCollectionRequest(name=name),
                                                   timeout=timeout or self.timeout)
        return resp.collection

    @_async_typed_errors
    async def drop_collection(self, name: str, timeout: float | None = None) -> None:
        await self._stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=timeout or self.timeout)

    async def index_images(self, collection: str, items: Iterable[ImageInput] | AsyncIterable[ImageInput],
                           timeout: float | None = None):
        """Async generator of one response per item, in order."""

        async def requests():
            n = 0
            if hasattr(items, "__aiter__"):
                async for item in items:
                    yield pb.IndexImagesRequest(collection=collection if n == 0 else "", item=item.to_pb())
                    n += 1
            else:
                for req in _index_requests(collection, items):
                    yield req

        try:
            async for resp in self._stub.IndexImages(requests(), timeout=timeout):
                yield resp
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    @_async_typed_errors
    async def search(self, collection: str, image: bytes | None = None, vector=None, item_id: str | None = None,
                     top_k: int | None = None, timeout: float | None = None, copy_detection: bool | None = None,
                     search_breadth: int | None = None, filter: str = "", min_score: float | None = None
                     ) -> pb.SearchImagesResponse:
        return await self._stub.SearchImages(_search_request(collection, image, vector, item_id, top_k,
                                                             copy_detection, search_breadth, filter, min_score),
                                             timeout=timeout or self.timeout)

    @_async_typed_errors
    async def batch_search(self, collection: str, queries: Iterable, top_k: int | None = None,
                           timeout: float | None = None, search_breadth: int | None = None, filter: str = "",
                           min_score: float | None = None) -> pb.BatchSearchImagesResponse:
        return await self._stub.BatchSearchImages(_batch_request(collection, queries, top_k, search_breadth, filter,
                                                                 min_score), timeout=timeout or self.timeout)

    @_async_typed_errors
    async def get_images(self, collection: str, ids: list[str], include_vectors: bool = False,
                         timeout: float | None = None) -> pb.GetImagesResponse:
        return await self._stub.GetImages(pb.GetImagesRequest(collection=collection, ids=ids,
                                                              include_vectors=include_vectors),
                                          timeout=timeout or self.timeout)

    @_async_typed_errors
    async def list_images(self, collection: str, filter: str = "", page_size: int = 0, page_token: str = "",
                          include_vectors: bool = False, timeout: float | None = None) -> pb.ListImagesResponse:
        return await self._stub.ListImages(_list_request(collection, filter, page_size, page_token, include_vectors),
                                           timeout=timeout or self.timeout)

    async def iter_images(self, collection: str, filter: str = "", page_size: int = 1000,
                          include_vectors: bool = False, timeout: float | None = None):
        """Async generator of every item that matches, in id order."""
        token = ""
        while True:
            page = await self.list_images(collection, filter, page_size, token, include_vectors, timeout)
            for image in page.images:
                yield image
            token = page.next_page_token
            if not token:
                return

    @_async_typed_errors
    async def update_images(self, collection: str, updates: Iterable[dict], update_mask: Iterable[str] = (),
                            timeout: float | None = None) -> pb.UpdateImagesResponse:
        return await self._stub.UpdateImages(_update_request(collection, updates, update_mask),
                                             timeout=timeout or self.timeout)

    @_async_typed_errors
    async def import_vectors(self, collection: str, items: Iterable[VectorInput], model: str, model_version: str,
                             per_message: int = IMPORT_ITEMS_PER_MESSAGE, on_sent=None,
                             timeout: float | None = None) -> pb.ImportVectorsResponse:
        """As SearchClient.import_vectors."""
        return await self._stub.ImportVectors(_import_requests(collection, model, model_version, items,
                                                               per_message, on_sent), timeout=timeout)

    @_async_typed_errors
    async def embed(self, image: bytes, model: str = "", collection: str = "",
                    timeout: float | None = None) -> pb.EmbedImageResponse:
        return await self._stub.EmbedImage(pb.EmbedImageRequest(image=image, model=model, collection=collection),
                                           timeout=timeout or self.timeout)

    @_async_typed_errors
    async def delete(self, collection: str, ids: list[str], timeout: float | None = None) -> pb.DeleteImagesResponse:
        return await self._stub.DeleteImages(pb.DeleteImagesRequest(collection=collection, ids=ids),
                                             timeout=timeout or self.timeout)


def struct_to_dict(s: struct_pb2.Struct) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(s)
