"""The committed stubs are exactly what `make protos` generates from the .proto files."""

import shutil
import subprocess
import sys

from tests.helpers import ROOT


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", work / "protos")
    shutil.copytree(ROOT / "scripts", work / "scripts")
    (work / "clients").mkdir()
    subprocess.run([sys.executable, str(work / "scripts" / "gen_protos.py")], check=True, capture_output=True)
    generated = sorted(p.relative_to(work / "clients") for p in (work / "clients").rglob("*.py*"))
    assert generated, "nothing was generated"
    for rel in generated:
        committed = ROOT / "clients" / rel
        assert committed.exists(), f"{rel} is generated but not committed"
        assert committed.read_bytes() == (work / "clients" / rel).read_bytes(), \
            f"{rel} differs from a fresh generation: run `make protos`"
