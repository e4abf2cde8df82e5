"""The README's first command, end to end at a reduced size, on the session's Ray."""

import contextlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest

from clare_dist.batch import read_results
from clare_dist.bundle import load_bundle
from clare_dist.cli import main
from clare_dist.labels import COMBINATIONS
from clare_dist.scans import read_scan


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_address) -> tuple[Path, list[str], str]:
    """One demo run: its --out, its arguments and what it printed."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    argv = ["demo", "--out", str(out), "--n-images", "120", "--size", "48", "--epochs", "1", "--backlog", "60",
            "--address", ray_address]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, argv, printed.getvalue()


def test_demo_trains_bundles_indexes_and_screens_a_backlog(demo):
    out, _, printed = demo
    assert "Table 1 of the synthetic archive" in printed and "26 combinations, 120 images" in printed
    assert set(pd.read_parquet(out / "prepared" / "labels.parquet")["combination"]) == set(COMBINATIONS)

    bundle = load_bundle(out / "run" / "bundle")
    assert bundle.has_index and bundle.manifest["index"]["cases"] == 120
    assert (out / "run" / "evaluation" / "evaluation.md").exists()
    assert "with thresholds fitted on the validation fold (fair); baseline (PR)" in printed  # the fair figure first
    assert "## Fair protocol" in (out / "run" / "evaluation" / "evaluation.md").read_text()
    assert (out / "screened" / "worklist.csv").exists()

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


def test_demo_resumes_where_it_stopped(demo, tmp_path, capsys, ray_address):
    """Re-run with the same settings, the demo keeps what is finished (archives, labels,
    references, folds, bundle, screened scans) and does the rest: here a backlog whose drawing
    was interrupted (no label table, a scan cut short) is drawn again and its scans screened.
    Other settings are refused with a message instead of being mixed in."""
    out, argv, _ = demo
    bundle = load_bundle(out / "run" / "bundle")
    kept = {path: path.stat().st_mtime_ns for path in [
        out / "archive" / "Data_Entry_2017.csv", out / "prepared" / "labels.parquet",
        out / "references" / "references.json", *sorted((out / "run").glob("fold_*/done.json"))]}
    (out / "backlog" / "Data_Entry_2017.csv").unlink()
    cut = sorted((out / "backlog" / "images").glob("*.png"))[0]
    cut.write_bytes(cut.read_bytes()[:100])
    shutil.rmtree(out / "screened")

    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "resuming the demo" in printed
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert load_bundle(out / "run" / "bundle").model_version == bundle.model_version
    assert read_scan(cut).shape == (48, 48)
    screened = read_results(out / "screened")
    assert len(screened) == 64 and (screened["status"] == "ok").sum() == 60

    assert main([*argv[:-2], "--epochs", "2", "--address", ray_address]) == 2
    assert "other settings (epochs 1 -> 2)" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a demo")
    assert main(["demo", "--out", str(tmp_path / "other"), "--address", ray_address]) == 2
    assert "is not empty and holds no demo run" in capsys.readouterr().err


def test_synth_cli_writes_dicom(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--n-images", "60", "--size", "48", "--dicom"]) == 0
    assert len(list((tmp_path / "a" / "images").glob("*.dcm"))) == 60
    assert "wrote 60 images" in capsys.readouterr().out
