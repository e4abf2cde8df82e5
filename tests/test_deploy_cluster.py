"""The KubeRay manifests' commands on a local cluster laid out as they lay it out (conftest's
`ray_address`: a head started with the manifests' rayStartParams, one CPU worker node).

What differs from a Kubernetes cluster, and only that: the volumes' paths are replaced by
temporary folders, the regressor's GPU request is dropped (this machine has no GPU), and Serve's
proxy runs on the head only (both nodes share this host's ports; on Kubernetes each Pod has its own).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pandas as pd
import requests
import yaml

from clare_dist.batch import read_results
from clare_dist.bundle import load_bundle
from conftest import connect_ray, KUBERAY_DIR

SERVE_CONFIG = KUBERAY_DIR.parents[1] / "serve" / "config.yaml"


def entrypoint_script(manifest: str) -> str:
    """The shell script a RayJob's `bash -c '...'` entrypoint runs."""
    entrypoint = yaml.safe_load((KUBERAY_DIR / manifest).read_text())["spec"]["entrypoint"]
    command = shlex.split(entrypoint)
    assert command[:2] == ["bash", "-c"] and len(command) == 3, entrypoint
    return command[2]


def with_paths(script: str, paths: dict[str, str]) -> str:
    """The script with each volume path (a whole path or a prefix of one) mapped to a local folder."""
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    volume_path = re.compile(rf"(?<![\w/.-])({alternatives})(?=[/\s;']|$)")
    replaced = volume_path.sub(lambda m: paths[m.group(1)], script)
    assert volume_path.search(replaced) is None, replaced
    assert not re.search(r"(?<![\w/.-])/(?!tmp/)", replaced), f"a path on a volume this test does not map: {replaced}"
    return replaced


def test_the_embed_rayjob_entrypoint_indexes_and_screens(ray_address, tiny_archive, tiny_bundle, tmp_path):
    workspace = tmp_path / "workspace"
    shutil.copytree(tiny_bundle, workspace / "runs" / "resnet50" / "bundle")
    shutil.copytree(tiny_archive / "prepared", workspace / "cxr14")
    backlog = tmp_path / "backlog"
    backlog.mkdir()
    for png in sorted((tiny_archive / "archive" / "images").glob("*.png"))[:12]:
        shutil.copy(png, backlog / f"new-{png.name}")
    (backlog / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    script = with_paths(entrypoint_script("rayjob-embed.yaml"), {
        "/workspace": str(workspace), "/data/cxr14": str(tiny_archive / "archive"), "/backlog": str(backlog),
    })
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    bundle = load_bundle(workspace / "runs" / "resnet50" / "bundle")
    labels = pd.read_parquet(workspace / "cxr14" / "labels.parquet")
    assert bundle.has_index and bundle.manifest["index"]["cases"] == len(labels)
    screened = read_results(workspace / "screened" / "backlog")
    assert len(screened) == 13 and screened.set_index("scan_id").loc["broken.png", "status"] == "error"
    assert (screened["status"] == "ok").sum() == 12 and screened["similar_cases"].dropna().map(len).sum() > 0
    assert (workspace / "screened" / "backlog" / "report.html").exists()


def test_the_rayservice_serve_config_serves(ray_address, indexed_tiny_bundle, tiny_archive, tmp_path):
    from ray import serve

    from conftest import start_serve
    from serve.app import APP_NAME

    connect_ray(ray_address)
    port = start_serve()  # the session's proxy; the config's port 8000 may be taken on this machine
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"  # as the session's proxy runs (conftest.start_serve)
    (app,) = config["applications"]
    app["args"]["bundle"] = str(indexed_tiny_bundle)
    (regressor,) = [d for d in app["deployments"] if d["name"] == "Regressor"]
    del regressor["ray_actor_options"]["num_gpus"]
    local = tmp_path / "config.yaml"
    local.write_text(yaml.safe_dump(config))
    deploy = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "run", str(local), "--address", ray_address,
                             "--non-blocking"], capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    try:
        deadline, ready = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
                if ready.status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # proxy up, app still deploying
                pass
            time.sleep(2)
        assert ready is not None and ready.status_code == 200, serve.status()
        scan = sorted((tiny_archive / "archive" / "images").glob("*.png"))[0]
        answer = requests.post(f"http://127.0.0.1:{port}/v1/predict", data=scan.read_bytes(),
                               headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200, answer.text  # no token configured: authentication is off
        assert answer.json()["model_version"] == load_bundle(indexed_tiny_bundle).model_version
        statuses = serve.status().applications[APP_NAME].deployments
        assert set(statuses) == {d["name"] for d in app["deployments"]}
    finally:
        serve.delete(APP_NAME)
