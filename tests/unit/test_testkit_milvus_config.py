"""The test kit's embedded-Milvus launcher takes milvus.yaml settings (the million-item benchmark's
segment size) and refuses to serve when one did not reach the written config."""

import sys

import pytest
import yaml

from revsearch_testkit.chaos import _check_config, milvus_server_command


def test_the_milvus_server_command_carries_each_setting_as_key_equals_value(tmp_path):
    cmd = milvus_server_command(tmp_path, 19999, {"dataCoord.segment.maxSize": "16384"})
    assert cmd[:2] == [sys.executable, "-m"]
    assert cmd[-3:] == [str(tmp_path), "19999", "dataCoord.segment.maxSize=16384"]


def test_a_setting_that_reached_milvus_yaml_passes_the_check(tmp_path):
    path = tmp_path / "milvus.yaml"
    path.write_text(yaml.safe_dump({"dataCoord": {"segment": {"maxSize": 16384, "sealProportion": 0.5}}}))
    _check_config(path, {"dataCoord.segment.maxSize": "16384", "dataCoord.segment.sealProportion": "0.5"})


def test_a_setting_the_template_lacks_stops_the_server_naming_it(tmp_path):
    path = tmp_path / "milvus.yaml"
    path.write_text(yaml.safe_dump({"dataCoord": {"segment": {"maxSize": 512}}}))
    with pytest.raises(SystemExit, match=r"dataCoord\.segment\.maxSize=16384 \(written: 512\).*dataCoord\.nope=1"):
        _check_config(path, {"dataCoord.segment.maxSize": "16384", "dataCoord.nope": "1"})
