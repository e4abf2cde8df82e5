"""The RayJob entrypoints (deploy/kuberay/rayjob-*.yaml), checked offline: every command is one
clare-dist's own argument parser accepts (full flag names, --address where it joins Ray), KubeRay's
submitter hands each entrypoint to Ray whole, and the paths it names are on the volumes the head
and every worker mount. The tests at the end feed the checkers broken entrypoints.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import groups, jobs, object_name, ray_container, the

# Besides clare-dist, what an entrypoint may run (shell built-ins that guard the steps).
SHELL_WORDS = {"set", "test", "["}
# Subcommands that join a Ray cluster: in a RayJob they must say so (--address), or a missing
# RAY_ADDRESS would quietly start a second, local Ray inside the head Pod.
RAY_COMMANDS = {"train", "embed", "demo", "serve"}


# ---- the checkers ---------------------------------------------------------------------------


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, split at ;, &&, ||, | and newlines (quotes kept)."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|\n")
    lexer.whitespace, lexer.whitespace_split = " \t\r", True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|\n"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [command for command in commands + [current] if command]


def inner_script(command: list[str]) -> str | None:
    """The script of a `bash -c '...'` (or `sh -c`) command."""
    if len(command) == 3 and command[0] in ("bash", "sh") and command[1] in ("-c", "-ec", "-ce"):
        return command[2]
    return None


def entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The commands a RayJob entrypoint runs on the cluster (inside its `bash -c`, if any)."""
    outer = shell_commands(entrypoint)
    script = inner_script(outer[0]) if len(outer) == 1 else None
    return shell_commands(script) if script is not None else outer


def strict_cli_parser() -> argparse.ArgumentParser:
    """clare-dist's own parser, refusing abbreviated flags: a manifest spells flags in full, so
    a flag added later cannot make an abbreviation ambiguous."""
    from clare_dist.cli import build_parser

    parser = build_parser()
    parsers = [parser] + [p for action in parser._subparsers._group_actions for p in action.choices.values()]
    for p in parsers:
        p.allow_abbrev = False
    return parser


def parse_clare_dist(args: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """(namespace, None) when clare-dist accepts `args`; (None, argparse's message) when not."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            return strict_cli_parser().parse_args(args), None
    except SystemExit as exc:
        reason = stderr.getvalue().strip().splitlines()[-1:] or ["prints help and exits"]
        return None, f"exit {exc.code}: {reason[0]}"


def clare_dist_args(argv: list[str]) -> list[str] | None:
    """The arguments of a clare-dist command (`clare-dist ...` or `python -m clare_dist ...`)."""
    if argv[0] == "clare-dist":
        return argv[1:]
    if argv[0] in ("python", "python3") and argv[1:3] == ["-m", "clare_dist"]:
        return argv[3:]
    return None


def command_problems(argv: list[str]) -> list[str]:
    """One command of an entrypoint: a clare-dist command our parser accepts, or a shell guard."""
    args = clare_dist_args(argv)
    if args is None:
        if argv[0] in ("python", "python3") and argv[1:2] == ["-m"] and len(argv) > 2:
            return [] if importlib.util.find_spec(argv[2]) else [f"{shlex.join(argv)}: no module {argv[2]}"]
        return [] if argv[0] in SHELL_WORDS else [f"{shlex.join(argv)}: {argv[0]!r} is not a command the image has"]
    namespace, error = parse_clare_dist(args)
    if namespace is None:
        return [f"{shlex.join(argv)}: clare-dist refuses it ({error})"]
    if namespace.command in RAY_COMMANDS and not namespace.address:
        return [f"{shlex.join(argv)}: joins Ray without --address (use --address auto in a RayJob)"]
    return []


def entrypoint_problems(job: dict) -> list[str]:
    """Every command of a RayJob's entrypoint exists and accepts its arguments.

    KubeRay's K8sJobMode submitter pastes the entrypoint unquoted into its own shell script
    (`... else ray job submit ... -- <entrypoint> ; fi`), so a `;`, `&&` or `||` outside quotes
    ends the submission there and runs the rest in the submitter Pod. Several commands go inside
    `bash -c '...'`, starting with `set -e` so that a failed step fails the job.
    """
    entrypoint = job["spec"].get("entrypoint", "")
    outer = shell_commands(entrypoint)
    if len(outer) > 1:
        return [(f"spec.entrypoint has {len(outer)} commands outside quotes: KubeRay's submitter would run all but "
                 "the first in the submitter Pod; put them in bash -c '...'")]
    commands = entrypoint_commands(entrypoint)
    problems = []
    if len(commands) > 1 and commands[0] != ["set", "-e"]:
        problems.append("spec.entrypoint: a script of several commands must start with `set -e`, "
                        "or a failed step would not fail the job")
    if not any(clare_dist_args(c) is not None for c in commands):
        problems.append(f"spec.entrypoint runs no clare-dist command: {entrypoint!r}")
    return problems + [problem for command in commands for problem in command_problems(command)]


def submitted_entrypoint(entrypoint: str) -> subprocess.CompletedProcess:
    """What Ray receives for this entrypoint from KubeRay's submitter: KubeRay 1.7's script
    (GetK8sJobCommand) run by bash, with `ray` a function that prints the entrypoint the way
    `ray job submit` joins it (shlex.join), and no PATH, so nothing else can run."""
    record = f"{shlex.quote(sys.executable)} -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))'"
    script = (
        'ray() { if [ "$2" = status ]; then return 1; fi; while [ "$1" != -- ]; do shift; done; shift; '
        f'{record} "$@"; }}; '
        "if ray job status --address http://head:8265 job-1 >/dev/null 2>&1 ; "
        "then ray job logs --address http://head:8265 --follow job-1 ; "
        f"else ray job submit --address http://head:8265 --submission-id job-1 -- {entrypoint.strip()} ; fi"
    )
    bash = shutil.which("bash") or pytest.skip("needs bash")
    return subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=30, env={"PATH": "/nonexistent"},
                          check=False)


def mounts(container: dict) -> dict[str, bool]:
    """mountPath → readOnly."""
    return {m["mountPath"].rstrip("/"): bool(m.get("readOnly")) for m in container.get("volumeMounts") or []}


def mount_for(path: Path, container_mounts: dict[str, bool]) -> str | None:
    """The mount a path is on (the longest mountPath it is under), if any."""
    candidates = [m for m in container_mounts if path == Path(m) or Path(m) in path.parents]
    return max(candidates, key=len, default=None)


def written_paths(namespace: argparse.Namespace) -> set[str]:
    """The arguments a clare-dist command writes to: its output, and the bundle when indexing."""
    return {"out"} | ({"bundle"} if getattr(namespace, "build_index", False) else set())


def entrypoint_path_problems(job: dict) -> list[str]:
    """The paths the entrypoint names are on volumes, in the head (the driver) and in every worker
    (Ray tasks read and write them there too), and what it writes is not on a read-only mount."""
    problems = []
    for argv in entrypoint_commands(job["spec"].get("entrypoint", "")):
        args = clare_dist_args(argv)
        namespace = parse_clare_dist(args)[0] if args is not None else None
        if namespace is None:
            continue
        for field, value in vars(namespace).items():
            if not (isinstance(value, Path) and value.is_absolute()):
                continue
            for at, group in groups(job):
                container_mounts = mounts(ray_container(group))
                mount = mount_for(value, container_mounts)
                if mount is None:
                    problems.append(f"{at}: {namespace.command} --{field.replace('_', '-')} {value} is on no volume")
                elif field in written_paths(namespace) and container_mounts[mount]:
                    problems.append(f"{at}: {namespace.command} writes {value}, on the read-only mount {mount}")
    return problems


# ---- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("job", jobs(), ids=object_name)
def test_rayjob_entrypoint_is_a_command_clare_dist_accepts(job):
    assert entrypoint_problems(job) == []


@pytest.mark.parametrize("job", jobs(), ids=object_name)
def test_rayjob_entrypoint_reaches_ray_whole_through_kuberays_submitter(job):
    submitted = submitted_entrypoint(job["spec"]["entrypoint"])
    assert submitted.stderr == ""
    (ray_entrypoint,) = submitted.stdout.splitlines()
    assert entrypoint_commands(ray_entrypoint) == entrypoint_commands(job["spec"]["entrypoint"])


@pytest.mark.parametrize("job", jobs(), ids=object_name)
def test_rayjob_entrypoint_paths_are_on_the_right_volumes(job):
    assert entrypoint_path_problems(job) == []


# ---- the checks bite: broken entrypoints ----------------------------------------------------


@pytest.mark.parametrize("old, new, expected", [
    ("clare-dist train", "clare-dist trian", "invalid choice: 'trian'"),
    ("clare-dist train", "clare-dst train", "'clare-dst' is not a command"),
    ("--epochs 30", "--epocs 30", "unrecognized arguments: --epocs"),
    ("--epochs 30", "--epoch 30", "unrecognized arguments: --epoch"),
    (" --address auto", "", "without --address"),
    ("--references /workspace/refs ", "", "the following arguments are required: --references"),
], ids=["subcommand", "program", "flag", "abbreviated-flag", "no-address", "missing-required"])
def test_entrypoint_check_catches(old, new, expected):
    job = the("RayJob", "clare-train")
    assert old in job["spec"]["entrypoint"]
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace(old, new)
    assert any(expected in p for p in entrypoint_problems(job)), entrypoint_problems(job)


def test_entrypoint_check_catches_commands_the_submitter_would_run():
    job = the("RayJob", "clare-embed")
    script = inner_script(shell_commands(job["spec"]["entrypoint"])[0])
    job["spec"]["entrypoint"] = script
    assert any("KubeRay's submitter would run all but the first" in p for p in entrypoint_problems(job))
    without_set_e = the("RayJob", "clare-embed")
    without_set_e["spec"]["entrypoint"] = shlex.join(["bash", "-c", script.removeprefix("set -e;")])
    assert any("must start with `set -e`" in p for p in entrypoint_problems(without_set_e))

    submitted = submitted_entrypoint(script)  # Ray would get `set -e`; the rest runs (here: fails) in bash
    assert submitted.stdout.splitlines() == ["set -e"] and "not found" in submitted.stderr


def test_entrypoint_check_reads_python_m_and_shell_guards():
    script = "set -e\ntest -f a || clare-dist references --out r && python -m clare_dist evaluate \\\n --run r --folds 0,1"
    assert entrypoint_commands(shlex.join(["bash", "-c", script])) == shell_commands(script) == [
        ["set", "-e"], ["test", "-f", "a"], ["clare-dist", "references", "--out", "r"],
        ["python", "-m", "clare_dist", "evaluate", "--run", "r", "--folds", "0,1"],
    ]
    assert command_problems(["python", "-m", "clare_dist", "evaluate", "--run", "/r"]) == []
    assert command_problems(["python", "-m", "no_such_module_here"])


def test_path_check_catches_unmounted_and_read_only_outputs():
    job = the("RayJob", "clare-train")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--out /workspace/runs/resnet50", "--out /scratch/run")
    assert any("--out /scratch/run is on no volume" in p for p in entrypoint_path_problems(job))

    job = the("RayJob", "clare-embed")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--out /workspace/screened/backlog", "--out /backlog/out")
    assert any("on the read-only mount /backlog" in p for p in entrypoint_path_problems(job))

    job = the("RayJob", "clare-embed")
    worker = ray_container(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])
    worker["volumeMounts"] = [m for m in worker["volumeMounts"] if m["mountPath"] != "/backlog"]
    assert any(p.startswith("spec.rayClusterSpec.workerGroupSpecs[0]") and "/backlog is on no volume" in p
               for p in entrypoint_path_problems(job))
