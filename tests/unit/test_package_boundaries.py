"""What the revsearch package loads, and the one table of enum names everyone shares.

The server imports the generated stubs (revsearch.v1) and the enum names (revsearch.names) from the
client package; doing so must not drag in the client library, its errors or the CLI's rich.
"""

import json
import subprocess
import sys

import pytest

from revsearch import names
from revsearch.v1 import search_service_pb2 as pb

# Loaded only by the client library and the CLI; a process that wants only the stubs needs none of them.
HEAVY = ["revsearch.client", "revsearch.errors", "revsearch.cli", "rich"]


def _modules_loaded_by(statements: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has loaded after running the statements (this one has them all)."""
    code = f"{statements}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_stubs_does_not_load_the_client_library():
    loaded = _modules_loaded_by("import revsearch.names\nimport revsearch.v1.search_service_pb2_grpc")
    assert loaded == set()


def test_the_client_library_is_still_importable_from_the_package():
    assert _modules_loaded_by("from revsearch import AsyncSearchClient, RevsearchClientError, SearchClient") \
        >= {"revsearch.client", "revsearch.errors"}
    from revsearch import AsyncSearchClient, RevsearchClientError, SearchClient
    from revsearch.client import AsyncSearchClient as Async, SearchClient as Sync
    from revsearch.errors import RevsearchClientError as Error

    assert (SearchClient, AsyncSearchClient, RevsearchClientError) == (Sync, Async, Error)


def test_an_unknown_name_in_the_package_is_an_attribute_error():
    import revsearch

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        revsearch.NoSuchThing  # noqa: B018


TABLES = [(names.CROP_MODES, pb.CropMode), (names.MEDIA_TYPES, pb.MediaType),
          (names.INDEX_BACKENDS, pb.IndexBackend), (names.SAMPLING_MODES, pb.SamplingMode),
          (names.RANKINGS, pb.VideoRanking), (names.ITEM_STATUSES, pb.ItemStatus),
          (names.INFERENCE_BACKENDS, pb.InferenceBackend)]


@pytest.mark.parametrize("table, enum", TABLES, ids=[enum.DESCRIPTOR.name for _, enum in TABLES])
def test_every_enum_value_but_unspecified_has_exactly_one_name(table, enum):
    numbers = sorted(v.number for v in enum.DESCRIPTOR.values if not v.name.endswith("_UNSPECIFIED"))
    assert sorted(table.values()) == numbers  # each once: a value named twice would appear twice here
    for name, number in table.items():
        assert names.name_of(table, number) == name


def test_an_unspecified_or_unknown_value_gets_the_default_name():
    assert names.name_of(names.CROP_MODES, pb.CROP_MODE_UNSPECIFIED, "none") == "none"
    assert names.name_of(names.INFERENCE_BACKENDS, 99) == "-"
