"""The gRPC servicer: request messages -> use case calls -> response messages. Nothing else.

Wire-level checks and conversion live in convert.py, stream mechanics in streams.py and
uploads.py, errors, metrics and malformed requests in calls.py (which wraps every method here),
and all search logic in the use cases.
"""

from __future__ import annotations

from revsearch.v1 import search_service_pb2 as pb

from ..errors import InvalidArgument
from ..validation import MAX_IMPORT_ITEMS_PER_MESSAGE
from ..usecases.collections import ManageCollections
from ..usecases.images import ImageSearch
from ..usecases.imports import ImportVectors
from ..usecases.items import ImageItems
from ..usecases.server_info import DescribeServer
from ..usecases.videos import VideoSearch
from . import convert
from .calls import CALLER
from .streams import read_ahead
from .uploads import ChunkBody, first_header


class SearchServicer:
    """Implements revsearch.v1.SearchService (registered through calls.service_handler)."""

    def __init__(self, collections: ManageCollections, images: ImageSearch, videos: VideoSearch,
                 server: DescribeServer, index_batch_size: int, imports: ImportVectors, items: ImageItems):
        self._collections = collections
        self._images = images
        self._items = items
        self._imports = imports
        self._videos = videos
        self._server = server
        self._index_batch = index_batch_size

    # -- collections -----------------------------------------------------------------------
    async def CreateCollection(self, request, context):
        spec, created = await self._collections.create(**convert.create_collection_args(request))
        info = self._collections.empty(spec) if created else await self._collections.describe(spec.name)
        return pb.CreateCollectionResponse(collection=convert.collection_pb(info), created=created)

    async def ListCollections(self, request, context):
        # Only the collections the caller's key may use (every one without keys).
        listed = await self._collections.list(visible=CALLER.get().may_use)
        return pb.ListCollectionsResponse(collections=[convert.collection_pb(info) for info in listed])

    async def DescribeCollection(self, request, context):
        info = await self._collections.describe(request.name)
        return pb.DescribeCollectionResponse(collection=convert.collection_pb(info))

    async def DropCollection(self, request, context):
        await self._collections.drop(request.name)
        return pb.DropCollectionResponse()

    # -- images ----------------------------------------------------------------------------
    async def IndexImages(self, requests, context):
        """Indexes whatever has arrived as one batch (streams.read_ahead: the flow control)."""
        stream = _OneCollection()
        async for batch in read_ahead(stream.items(requests), self._index_batch):
            outcomes = await self._images.index_batch(stream.collection, [item for _, item in batch])
            for (position, _), out in zip(batch, outcomes):
                yield convert.index_response_pb(position, out)

    async def SearchImages(self, request, context):
        result = await self._images.search(request.collection, convert.query_from_pb(request),
                                           convert.search_options_from_pb(request))
        return convert.search_response_pb(result)

    async def BatchSearchImages(self, request, context):
        results = await self._images.search_batch(request.collection, [convert.query_from_pb(q)
                                                                       for q in request.queries],
                                                  convert.search_options_from_pb(request))
        spec = None
        if all(isinstance(r, Exception) for r in results):  # the response still names the model
            spec = (await self._collections.describe(request.collection)).spec
        return convert.batch_search_response_pb(results, spec)

    async def EmbedImage(self, request, context):
        e = await self._images.embed_image(request.image, request.model, request.collection)
        return pb.EmbedImageResponse(vector=e.vector.tolist(), model=e.model.name, model_version=e.model.version,
                                     model_trained=e.model.trained, inference_backend=convert.backend_pb(e.backend))

    async def DeleteImages(self, request, context):
        deleted, missing = await self._images.delete(request.collection, list(request.ids))
        return pb.DeleteImagesResponse(deleted_ids=deleted, not_found_ids=missing)

    async def GetImages(self, request, context):
        found, missing = await self._items.get(request.collection, list(request.ids), request.include_vectors)
        return pb.GetImagesResponse(images=[convert.image_pb(i) for i in found], not_found_ids=missing)

    async def ListImages(self, request, context):
        page = await self._items.list(request.collection, request.filter, request.page_size, request.page_token,
                                      request.include_vectors)
        return convert.image_page_pb(page)

    async def UpdateImages(self, request, context):
        outcomes = await self._items.update(request.collection, convert.image_changes_from_pb(request),
                                            list(request.update_mask.paths))
        return convert.update_response_pb(outcomes)

    async def ImportVectors(self, requests, context):
        """The header first, then items as they come (the first message may carry both)."""
        messages = aiter(requests)
        first = await anext(messages, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first ImportVectorsRequest must carry the header (collection, model, "
                                  "model_version)")

        async def batches():
            position, message = 0, first
            while message is not None:
                if message is not first and message.HasField("header"):
                    raise InvalidArgument("only the first ImportVectorsRequest carries a header; one stream imports "
                                          "into one collection")
                if len(message.items) > MAX_IMPORT_ITEMS_PER_MESSAGE:
                    raise InvalidArgument(f"an ImportVectorsRequest carries {len(message.items)} items; at most "
                                          f"{MAX_IMPORT_ITEMS_PER_MESSAGE} per message (send more messages)")
                if message.items:
                    yield convert.vector_inputs_from_pb(message.items, position)
                    position += len(message.items)
                message = await anext(messages, None)

        report = await self._imports.run(convert.import_header_from_pb(first.header), batches())
        return convert.import_response_pb(report)

    # -- videos ----------------------------------------------------------------------------
    async def IndexVideo(self, requests, context):
        messages = aiter(requests)
        header = await first_header(messages, "IndexVideoRequest")
        out = await self._videos.index_video(convert.video_upload_from_pb(header), ChunkBody(messages))
        return convert.index_video_response_pb(out)

    async def SearchVideos(self, requests, context):
        messages = aiter(requests)
        header = await first_header(messages, "SearchVideosRequest")
        result = await self._videos.search(convert.video_query_from_pb(header), ChunkBody(messages))
        return convert.search_videos_response_pb(result)

    # -- server ----------------------------------------------------------------------------
    async def GetServerInfo(self, request, context):
        return convert.server_info_pb(self._server.info())


class _OneCollection:
    """An IndexImages stream: the first request names the collection, later ones repeat it or
    leave it empty."""

    def __init__(self):
        self.collection = ""

    async def items(self, requests):
        async for request in requests:
            if not self.collection:
                if not request.collection:
                    raise InvalidArgument("the first IndexImagesRequest must name the collection")
                self.collection = request.collection
            elif request.collection and request.collection != self.collection:
                raise InvalidArgument(f"one stream indexes into one collection: got {request.collection!r} "
                                      f"after {self.collection!r}")
            yield convert.index_input_from_pb(request.item)
