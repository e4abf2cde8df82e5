"""Screening runs without torch, torchvision and matplotlib, and answers as it does with them.

Every Serve replica and Ray Data worker only runs an ONNX graph; loading torch there would cost
seconds and hundreds of MB for nothing. A subprocess in which importing those packages fails
imports the whole inference path, runs `clare-dist predict --json`, the batch job's stages, the
scan workers and the serving stages on a few scans of a bundle, and must get what the same calls
give here, where the fixtures have loaded torch. Any attempt by clare-dist's own code to import
them fails the test, even one that would have been caught. (The blocked packages raise
ImportError from a meta-path finder rather than standing as None in sys.modules: SciPy, which
scikit-learn loads for the command line, reads a None there as torch being present and fails.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from inference_calls import answers

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BLOCKED = ("torch", "torchvision", "matplotlib")
INFERENCE_PATH = (
    "clare_dist.scans", "clare_dist.runtime", "clare_dist.bundle", "clare_dist.reference_file", "clare_dist.rules",
    "clare_dist.explanation", "clare_dist.screening", "clare_dist.scan_workers", "clare_dist.batch",
    "clare_dist.archive", "clare_dist.case_index", "clare_dist.report", "clare_dist.cli", "serve.stages", "jobs.embed",
    "clare_dist.triage", "clare_dist.result_files", "clare_dist.encode.dicom_sr", "clare_dist.encode.dicom_sc",
    "clare_dist.encode.fhir", "serve.encodings",
)

CHILD = """
import importlib, importlib.abc, json, sys
from pathlib import Path

BLOCKED, ROOT, OUT = {blocked!r}, {root!r}, {out!r}
attempts = []

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in BLOCKED:
            return None
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith("<") or "importlib" in frame.f_code.co_filename):
            frame = frame.f_back
        attempts.append([name, frame.f_code.co_filename if frame is not None else "?"])
        raise ImportError(f"{{name}} is blocked in this test")

sys.meta_path.insert(0, Blocked())
for module in {modules!r}:
    importlib.import_module(module)
import clare_dist
from inference_calls import answers
result = answers(Path({bundle!r}), [Path(p) for p in {scans!r}], Path({images_root!r}))
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
Path(OUT).write_text(json.dumps({{"answers": result, "attempts": attempts, "loaded": loaded,
                                  "clare_dist": clare_dist.__file__}}))
"""


def test_the_inference_path_needs_no_torch_and_answers_the_same(indexed_tiny_bundle, tiny_archive, tmp_path):
    images_root = tiny_archive / "archive"
    broken = tmp_path / "cut.png"
    first = sorted((images_root / "images").iterdir())[:4]
    broken.write_bytes(first[0].read_bytes()[:200])
    scans = [*first[:2], broken, *first[2:]]
    out = tmp_path / "child.json"
    code = CHILD.format(blocked=BLOCKED, root=str(ROOT), out=str(out), modules=INFERENCE_PATH,
                        bundle=str(indexed_tiny_bundle), scans=[str(s) for s in scans], images_root=str(images_root))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    child = json.loads(out.read_text())

    assert child["clare_dist"].startswith(str(ROOT)), child["clare_dist"]  # this checkout, not an installed copy
    assert child["loaded"] == []
    ours = [(name, file) for name, file in child["attempts"] if file.startswith(str(ROOT))]
    assert ours == [], f"clare-dist code tried to import {ours}"
    assert "torch" in sys.modules  # the comparison below is with torch loaded

    here = json.loads(json.dumps(answers(indexed_tiny_bundle, scans, images_root)))
    assert child["answers"] == here
    predict = here["predict"]
    assert predict["exit"] == 1 and len(predict["lines"]) == 4  # the broken scan is reported, the others screened
    assert all(line["similar_cases"] for line in predict["lines"])
    assert [row["status"] for row in here["embed"]["rows"]] == ["ok", "ok", "error", "ok", "ok"]
    assert here["scan_workers"][2] == "truncated" and here["serve"][2]["error_kind"] == "truncated"
    assert [s["screening"] for s in here["serve"] if "screening" in s] == predict["lines"]
