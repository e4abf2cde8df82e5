"""One error hierarchy: every failure clare-dist raises on purpose is a ClareError, which the
command line prints as one line and exits 2 for; anything else keeps its traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import clare_dist
import serve
from clare_dist.cli import main
from clare_dist.errors import ClareError


def _modules(package) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
            if not m.name.endswith("__main__")]


def test_every_exception_defined_in_the_code_is_a_clare_error():
    defined = {}
    for name in _modules(clare_dist) + _modules(serve):
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                defined[f"{name}.{attr}"] = value
    assert {"clare_dist.scans.errors.ScanError", "clare_dist.bundle.BundleError", "serve.requests.APIError",
            "clare_dist.evaluation.PredictionsError"} <= set(defined)
    assert [name for name, cls in defined.items() if not issubclass(cls, ClareError)] == []


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path), "--folds", "7"]) == 2
    assert capsys.readouterr().err == "clare-dist evaluate: error: --folds takes fold numbers 0-4 separated by commas, e.g. 0,1; got '7'\n"
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"")
    assert main(["predict", str(scan), "--bundle", str(tmp_path / "no-bundle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clare-dist predict: error: ") and "Traceback" not in err and str(tmp_path / "no-bundle") in err
    assert main(["predict", str(scan), "--bundle", str(tmp_path), "--max-pixels", "0"]) == 2
    assert "max_pixels" in capsys.readouterr().err


def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch):
    import clare_dist.steps.prepare

    def broken(*args, **kwargs):
        raise KeyError("a bug, not the user's file")

    monkeypatch.setattr(clare_dist.steps.prepare, "prepare", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["prepare", "--data-entry", str(tmp_path / "Data_Entry.csv"), "--out", str(tmp_path / "out")])
