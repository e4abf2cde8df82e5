"""The README's first command, at a reduced size."""

import pandas as pd

from clare_dist.cli import main
from clare_dist.labels import COMBINATIONS


def test_demo_runs_synth_prepare_references_and_prints_table_1(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-images", "120", "--size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "Table 1 of the synthetic archive" in printed and "26 combinations, 120 images" in printed
    table = pd.read_parquet(out / "prepared" / "labels.parquet")
    assert set(table["combination"]) == set(COMBINATIONS)
    assert len(list((out / "archive" / "images").glob("*.png"))) == 120
    assert (out / "references" / "references.json").exists()


def test_synth_cli_writes_dicom(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--n-images", "60", "--size", "48", "--dicom"]) == 0
    assert len(list((tmp_path / "a" / "images").glob("*.dcm"))) == 60
    assert "wrote 60 images" in capsys.readouterr().out
