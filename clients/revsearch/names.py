"""The names of the service's enum values as people type and read them: one table per enum.

The client library, the CLI and the server's protobuf conversion all take their names from
here, so a name means the same everywhere. Only the generated stubs are imported.
"""

from __future__ import annotations

from .v1 import search_service_pb2 as pb

CROP_MODES = {"none": pb.CROP_MODE_NONE, "largest": pb.CROP_MODE_LARGEST_FACE, "all": pb.CROP_MODE_ALL_FACES}
MEDIA_TYPES = {"image": pb.MEDIA_TYPE_IMAGE, "video": pb.MEDIA_TYPE_VIDEO}
INDEX_BACKENDS = {"milvus": pb.INDEX_BACKEND_MILVUS, "exact_knn": pb.INDEX_BACKEND_EXACT_KNN}
SAMPLING_MODES = {"uniform": pb.SAMPLING_MODE_UNIFORM, "jitter": pb.SAMPLING_MODE_JITTER,
                  "scene": pb.SAMPLING_MODE_SCENE}
RANKINGS = {"frames": pb.VIDEO_RANKING_FRAMES, "mean_vector": pb.VIDEO_RANKING_MEAN_VECTOR}
ITEM_STATUSES = {"indexed": pb.ITEM_STATUS_INDEXED, "duplicate": pb.ITEM_STATUS_DUPLICATE,
                 "failed": pb.ITEM_STATUS_FAILED, "no_face": pb.ITEM_STATUS_NO_FACE}
VECTOR_INDEX_TYPES = {"FLAT": pb.VECTOR_INDEX_TYPE_FLAT, "HNSW": pb.VECTOR_INDEX_TYPE_HNSW,
                      "IVF_FLAT": pb.VECTOR_INDEX_TYPE_IVF_FLAT, "IVF_SQ8": pb.VECTOR_INDEX_TYPE_IVF_SQ8,
                      "DISKANN": pb.VECTOR_INDEX_TYPE_DISKANN, "AUTOINDEX": pb.VECTOR_INDEX_TYPE_AUTOINDEX}
INFERENCE_BACKENDS = {"triton": pb.INFERENCE_BACKEND_TRITON,
                      "onnxruntime-local": pb.INFERENCE_BACKEND_ONNXRUNTIME_LOCAL,
                      "none": pb.INFERENCE_BACKEND_NONE}


def name_of(table: dict[str, int], value: int, default: str = "-") -> str:
    """The name of an enum value in one of the tables above (default for unknown or unspecified)."""
    for name, number in table.items():
        if number == value:
            return name
    return default
