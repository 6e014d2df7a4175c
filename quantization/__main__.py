"""python -m quantization {build,report} ...: int8/fp16/TFLite variants and their accuracy report."""

from __future__ import annotations

import sys

COMMANDS = {"build": "quantization.build", "report": "quantization.report"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m quantization {{{','.join(COMMANDS)}}} [options] (-h for each)", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
