"""The core must import and work with Ray absent (DESIGN.md §2)."""

import pkgutil
import subprocess
import sys

import clare_dist

BLOCK_RAY = """
import importlib.abc, sys
class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is blocked in this test")
sys.meta_path.insert(0, NoRay())
import importlib
for name in MODULES:
    importlib.import_module(name)
from clare_dist.cli import main
assert main(["prepare", "--help"]) == 0
"""


def test_every_core_module_imports_with_ray_blocked():
    modules = [f"clare_dist.{m.name}" for m in pkgutil.iter_modules(clare_dist.__path__) if m.name != "__main__"]
    assert "clare_dist.rules" in modules and "clare_dist.scans" in modules
    code = f"MODULES = {modules!r}\n" + BLOCK_RAY
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    # argparse's --help exits with SystemExit(0) after printing usage.
    assert done.returncode == 0, done.stderr
    assert "usage: clare-dist prepare" in done.stdout


def test_python_dash_m_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "clare_dist", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("demo", "synth", "prepare", "references"):
        assert command in done.stdout
