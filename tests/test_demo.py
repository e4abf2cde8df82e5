"""The README's first command, end to end at a reduced size, on the session's Ray."""

import pandas as pd

from clare_dist.batch import read_results
from clare_dist.bundle import load_bundle
from clare_dist.cli import main
from clare_dist.labels import COMBINATIONS


def test_demo_trains_bundles_indexes_and_screens_a_backlog(tmp_path, capsys, ray_address):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-images", "120", "--size", "48", "--epochs", "1", "--backlog", "60",
            "--address", ray_address]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Table 1 of the synthetic archive" in printed and "26 combinations, 120 images" in printed
    assert set(pd.read_parquet(out / "prepared" / "labels.parquet")["combination"]) == set(COMBINATIONS)

    bundle = load_bundle(out / "run" / "bundle")
    assert bundle.has_index and bundle.manifest["index"]["cases"] == 120
    assert (out / "run" / "evaluation" / "evaluation.md").exists()

    screened = read_results(out / "screened")
    assert len(screened) == 64 and screened["scan_id"].is_unique
    failed = screened[screened["status"] == "error"].set_index("scan_id")["error"]
    assert sorted(failed.str.split(":").str[0]) == ["empty", "no_pixel_data", "not_an_image", "truncated"]
    ok = screened[screened["status"] == "ok"]
    assert (ok["model_version"] == bundle.model_version).all()
    assert ok["similar_cases"].map(len).gt(0).any()
    assert str(out.resolve() / "screened" / "results") in printed
    report = out / "screened" / "report.html"
    assert printed.rstrip().endswith(f"report: open {report.resolve()} in a browser")
    page = report.read_text()
    assert all(scan_id in page for scan_id in failed.index) and bundle.model_version in page


def test_synth_cli_writes_dicom(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--n-images", "60", "--size", "48", "--dicom"]) == 0
    assert len(list((tmp_path / "a" / "images").glob("*.dcm"))) == 60
    assert "wrote 60 images" in capsys.readouterr().out
