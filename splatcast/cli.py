"""The ``splatcast`` command line: one parser, subcommands registered by their modules."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("splatcast.offline", "splatcast.server.cli", "splatcast.client.cli", "splatcast.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splatcast", description="Stream Gaussian Splatting video.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
