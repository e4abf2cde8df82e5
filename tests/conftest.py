"""Shared test fixtures: where the real data lives, and one set of references per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FULL_DATA_ENTRY = SHARED_DATA / "Data_Entry_2017_v2020.csv.gz"
SAMPLE = SHARED_DATA / "cxr14-sample"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not FULL_DATA_ENTRY.exists():
        pytest.skip("needs the real CXR14 files in ../shared/data, which is absent on this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`clare-dist references` run once for the session (it trains the label autoencoder)."""
    from clare_dist.cli import main

    out = tmp_path_factory.mktemp("references")
    assert main(["references", "--out", str(out)]) == 0
    return out
