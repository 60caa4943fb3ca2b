"""feed-fast: FEED knowledge distillation (train, eval, data check, demo).

Each command group lives with the code it drives and registers itself here through a `register(subparsers)`
function that sets `func` on its parser."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# module -> what it adds: engine (train, eval), loaders (data check), demo (demo)
COMMAND_MODULES = ("feed_fast.engine.cli", "feed_fast.loaders.cli", "feed_fast.demo.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feed-fast", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
