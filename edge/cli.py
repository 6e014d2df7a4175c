"""``poseface``: one command for the device tools, as ``yolo`` is for ultralytics.

    poseface COMMAND [ARGS ...]        poseface COMMAND --help: that command's own options

Each command is an existing module's ``main``, given the rest of the command line unchanged
(``poseface run --source 0`` is ``python -m edge.run --source 0``); the ``python -m`` forms keep
working. Only the program name in usage and help lines changes, to ``poseface COMMAND``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

# command -> (module named in help and in its own parser's prog, module holding main, one line)
# fmt: off
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("edge.run", "edge.app.run", "the runtime: camera to recognised person (what the systemd service runs)"),
    "enroll": ("edge.enroll", "edge.app.enroll",
               "manage the gallery: add, list, remove, export, import, check, keygen"),
    "calibrate": ("edge.calibrate", "edge.tools.calibrate",
                  "per-yaw-bin match thresholds on real CFP pairs at a target FAR"),
    "bench": ("edge.bench", "edge.tools.bench",
              "latency on this machine: the models side by side, or --pipeline per stage"),
    "detect": ("edge.detect", "edge.detect.__main__", "detect faces in images or folders; write JSON"),
    "demo": ("edge.demo", "edge.tools.demo", "the landmark chain on real photos: annotated picture and NME"),
    "config": ("edge.config", "edge.app.config.load",
               "validate a runtime config (with profile and --set); print it as JSON"),
    "faults": ("edge.faults", "edge.tools.faults", "the fault-injection campaign on real parts (--short for CI)"),
}
# fmt: on
PROG = "poseface"


def help_text() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [ARGS ...]",
        "",
        "Pose-robust face recognition on the device: one command for the edge tools.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {line}" for name, (_, _, line) in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help   show this help and exit",
        "  --version    show the package version and exit",
        "",
        f"{PROG} COMMAND --help shows that command's options. Each command is also its module's",
        f"python -m form, with the same options ({PROG} run = python -m edge.run).",
    ]
    return "\n".join(lines)


@contextmanager
def _prog(module: str, prog: str) -> Iterator[None]:
    """While a module's main runs, its parser is named ``prog`` instead of ``python -m module``
    (or, where the module names none, instead of the script's file name). Sub-command parsers
    take their names from it, so ``poseface enroll add --help`` reads right too."""
    original = argparse.ArgumentParser.__init__
    own = f"python -m {module}"

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if kwargs.get("prog", args[0] if args else None) in (None, own):
            self.prog = prog

    argparse.ArgumentParser.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__ = original  # type: ignore[method-assign]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"poseface-edge {version('poseface-edge')}"
    except PackageNotFoundError:
        return "poseface-edge (not installed as a package)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(f"{PROG}: error: no command given (one of {', '.join(COMMANDS)}; {PROG} --help)", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command in ("-h", "--help", "help"):
        print(help_text())
        return 0
    if command == "--version":
        print(_version())
        return 0
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (one of {', '.join(COMMANDS)}; {PROG} --help)"
        print(f"{PROG}: error: unknown command {command!r}{hint}", file=sys.stderr)
        return 2
    module, target, _ = COMMANDS[command]
    entry = importlib.import_module(target).main
    with _prog(module, f"{PROG} {command}"):
        return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
