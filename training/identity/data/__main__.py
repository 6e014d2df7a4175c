"""python -m training.identity.data {check,yaw} (--rec FILE.rec | --folder DIR) ...

check: read a streamed training source end to end and report what it holds (identities,
images, broken records, image sizes); exits 2 with one line naming the file and the record when
a pack is truncated or corrupt.
yaw: the yaw pre-pass for the pose-adaptive margin, written beside the source.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _write(report: dict, out) -> None:
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)


def cmd_check(args) -> int:
    from training.identity.data.check import check_folder, check_pack

    decode = not args.headers_only
    report = check_pack(args.rec, decode=decode) if args.rec else check_folder(args.folder, decode=decode)
    _write(report, args.json)
    return 0


def cmd_yaw(args) -> int:
    from training.identity.data.yawpass import write_yaw_sidecar

    write_yaw_sidecar(args.rec or args.folder, args.out, args.landmark_model, args.batch, args.threads)
    return 0


def _source(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--rec", default=None, help="insightface RecordIO pack (train.rec, its .idx beside it)")
    group.add_argument("--folder", default=None, help="image folder <root>/<identity>/<image>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.identity.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="scan a pack or folder: identities, images, broken records, sizes")
    _source(p)
    p.add_argument("--json", default=None, help="write the report here too")
    p.add_argument("--headers-only", action="store_true", help="read framing and labels, do not decode images")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("yaw", help="write the yaw sidecar (PAA's per-face yaw) beside a pack or folder")
    _source(p)
    p.add_argument("--out", default=None, help="sidecar file (default: train.yaw.npz / DIR.yaw.npz beside the source)")
    p.add_argument("--landmark-model", default=None, help="PIPNet model (default: the shipped one)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_yaw)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())  # one line
        print(f"training.identity.data {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
