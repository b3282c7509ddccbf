"""Face searches that reach the server at the same time share face detector calls (the detection
batcher of faces/cropper.py), and each still finds its own image first."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from revsearch import SearchClient
from revsearch.client import ImageInput
from revsearch_server.wiring import Overrides
from tests.fakes import FakeDetector, FakeInference
from tests.helpers import ServerThread, base_settings, encode, synthetic_image


class CountingDetector(FakeDetector):
    """The fake detector, 50 ms a call (so that calls pile up behind a running one), counting the
    calls and the images of each."""

    calls: list[int] = []
    lock = threading.Lock()

    def detect(self, images):
        time.sleep(0.05)
        with self.lock:
            CountingDetector.calls.append(len(images))
        return super().detect(images)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    overrides = Overrides(inference=FakeInference(), detector_for=CountingDetector)
    with ServerThread(base_settings(tmp_path_factory.mktemp("batching")), overrides) as srv:
        yield srv


def test_concurrent_face_searches_share_detector_calls_and_each_finds_its_own_image(server):
    images = {f"img{k}": encode(synthetic_image(100 + k)) for k in range(12)}
    with SearchClient(server.address, timeout=60) as client:
        client.create_collection("faces", model="face_dlib", crop_mode="largest")
        results = list(client.index_images("faces", [ImageInput(data, id=name) for name, data in images.items()]))
        assert all(r.id in images for r in results) and len(results) == 12
        CountingDetector.calls.clear()
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda item: (item[0], client.search("faces", item[1], top_k=1)),
                                    images.items()))
    for name, answer in answers:
        assert answer.hits[0].id == name and answer.hits[0].score > 0.99
    assert sum(CountingDetector.calls) == 12  # every query image detected once
    assert len(CountingDetector.calls) < 12 and max(CountingDetector.calls) > 1
