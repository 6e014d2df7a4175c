"""`poseface`: one command, a subcommand per device tool, each the module's own main and help."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent


def poseface(*args: str, script: str = "poseface") -> subprocess.CompletedProcess:
    exe = SCRIPTS / script
    assert exe.exists(), f"{exe} is not installed: pip install -e . (pyproject.toml [project.scripts])"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def option_strings(module_main_parser) -> set[str]:
    return {s for action in module_main_parser._actions for s in action.option_strings}


def test_help_lists_every_command_with_one_line():
    res = poseface("--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: poseface COMMAND")
    listed = dict(re.findall(r"^  ([a-z]+) {2,}(\S.*)$", res.stdout, flags=re.M))
    assert list(listed) == ["run", "enroll", "calibrate", "bench", "detect", "demo", "config", "faults"]
    assert all(listed[name] == line for name, (_, _, line) in COMMANDS.items())


def test_run_help_is_edge_runs_own_help_under_the_new_name():
    from edge.app.run import build_parser

    res = poseface("run", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: poseface run ")
    assert option_strings(build_parser()) <= set(re.findall(r"--?[a-z][a-z-]*", res.stdout))
    assert "python -m edge.run" not in res.stdout
    # the python -m form keeps working, under its own name
    old = subprocess.run([sys.executable, "-m", "edge.run", "--help"], capture_output=True, text=True, cwd=REPO)
    assert old.returncode == 0 and old.stdout.startswith("usage: python -m edge.run ")
    assert old.stdout.split("\n\n", 1)[1] == res.stdout.split("\n\n", 1)[1]  # the same options and texts


@pytest.mark.parametrize("args", [["rnu"], ["--source", "0"], []])
def test_unknown_or_missing_command_is_one_line_and_exit_2(args):
    res = poseface(*args)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("poseface: error: ")
    if args:
        assert repr(args[0]) in res.stderr
    if args == ["rnu"]:
        assert "did you mean 'run'" in res.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_shows_its_modules_help_named_poseface(command, capsys):
    import argparse

    init = argparse.ArgumentParser.__init__
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: poseface {command} ")
    assert argparse.ArgumentParser.__init__ is init  # the renaming ends with the command


def test_enroll_subcommands_are_named_too(capsys):
    with pytest.raises(SystemExit):
        main(["enroll", "add", "--help"])
    assert capsys.readouterr().out.startswith("usage: poseface enroll add ")


def test_arguments_and_exit_status_pass_straight_through(capsys):
    assert main(["config", "--set", "source.fps=12"]) == 0
    assert json.loads(capsys.readouterr().out)["source"]["fps"] == 12
    assert main(["config", "--set", "source.fps=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source.fps" in err


def test_version_and_the_older_scripts_still_work():
    res = poseface("--version")
    assert res.returncode == 0 and res.stdout.startswith("poseface-edge ")
    for script in ("poseface-bench", "poseface-detect", "poseface-demo"):
        res = poseface("--help", script=script)
        assert res.returncode == 0 and res.stdout.startswith("usage: "), (script, res.stderr)


def test_the_service_unit_and_the_readme_use_the_one_command():
    from edge.app.run import build_parser

    unit = (REPO / "firmware_configs" / "poseface-edge.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, flags=re.M)
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "poseface" and argv[1] == "run"
    build_parser().parse_args(argv[2:])  # options edge.run takes
    readme = (REPO / "README.md").read_text()
    used = re.findall(r"^poseface ([a-z-]+)", readme, flags=re.M)
    assert {"run", "enroll", "bench"} <= set(used)
    assert set(used) <= set(COMMANDS) | {"--help", "--version"}, used
    for module, _, _ in COMMANDS.values():  # examples show the one command, not python -m
        assert not re.search(rf"^python -m {re.escape(module)} ", readme, flags=re.M), module
