"""The ``otel-progress`` command: ``otel-progress demo`` for now (``watch``, ``serve`` and
``history`` come with the status app)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otel-progress`` console script."""
    parser = argparse.ArgumentParser(prog="otel-progress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the seed TaskUpdater example and print its span tree")
    demo.add_argument("--scale", type=float, default=0.05,
                      help="multiply the seed's sleeps by this factor (default 0.05)")
    demo.add_argument("--json", action="store_true", help="print the whole status payload")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.command == "demo":
        from otel_progress._demo import run_demo

        return run_demo(scale=max(args.scale, 0.0), as_json=args.json)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
