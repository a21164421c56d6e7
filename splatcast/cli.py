"""The ``splatcast`` command line: one parser, subcommands registered by their modules.

Every command's errors come out the same way, from ``main``: one line on stderr,
``splatcast <command>: error: <what>, <which file/URL/id>``, exit status 2 for a usage error
(argparse's own, or ``UsageError``), 1 for a failure, 130 for Ctrl-C; no traceback unless
``--debug``. Commands raise instead of printing: ``CommandError`` / ``UsageError`` for their own
checks, and the library's typed errors (``splatcast.client.SplatcastError``, ``ProtocolError``,
``PlyError``, ``CodecError``, ``OSError``) pass through ``main`` unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from splatcast import __version__

COMMAND_MODULES = ("splatcast.offline", "splatcast.evaluate", "splatcast.server.cli", "splatcast.client.cli",
                   "splatcast.demo")


class CommandError(Exception):
    """A command that cannot do its work: ``what`` went wrong, for ``where`` (a file, URL or id).

    ``main`` prints ``splatcast <command>: error: <what>, <where>`` and exits with ``exit_code`` (1).
    """

    exit_code = 1

    def __init__(self, what: str, where: object = None) -> None:
        super().__init__(what if where is None else f"{what}, {where}")


class UsageError(CommandError):
    """A command line that asks for something impossible (an option out of range): exit status 2."""

    exit_code = 2


def frame_name(index: int) -> str:
    """The file name of frame ``index`` written by ``decode``, ``watch`` and ``demo``: ``frame_00042.ply``."""
    return f"frame_{index:05d}.ply"


def ply_frames(directory: str | Path) -> list[Path]:
    """The ``*.ply`` files of ``directory`` in natural order (``splatcast.codec.ply_files``).

    Raises ``CommandError`` naming the directory when it is missing, not a directory or holds
    no ``.ply`` file.
    """
    from splatcast.codec import ply_files

    path = Path(directory)
    if not path.exists():
        raise CommandError("no such directory", path)
    if not path.is_dir():
        raise CommandError("not a directory", path)
    try:
        return ply_files(path)
    except FileNotFoundError:
        raise CommandError("no .ply files in the directory", path) from None


# The library's typed errors a command may end with, as (module, class): looked up in
# sys.modules, so reporting an error never imports torch (an error of a module that was never
# imported cannot have been raised).
KNOWN_ERRORS = (("splatcast.client.api", "SplatcastError"), ("splatcast.protocol.errors", "ProtocolError"),
                ("splatcast.codec.ply", "PlyError"), ("splatcast.codec.config", "CodecError"))


def error_message(error: BaseException) -> str | None:
    """The one-line message of an error a command may end with, or None for anything else (a bug).

    OSErrors name their file (``No such file or directory, notes.txt``); the others
    (``CommandError``, the client's ``SplatcastError``, ``ProtocolError``, ``PlyError``,
    ``CodecError``) carry their context in their message.
    """
    if isinstance(error, OSError) and error.filename is not None:
        names = ", ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        return f"{error.strerror or error}, {names}"
    known = [CommandError, OSError] + [getattr(sys.modules[module], name) for module, name in KNOWN_ERRORS
                                       if module in sys.modules]
    if not isinstance(error, tuple(known)):
        return None
    return str(error) or type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splatcast", description="Stream Gaussian Splatting video.")
    parser.add_argument("--version", action="version", version=f"splatcast {__version__}")
    debug_help = "show the traceback of an error"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for sub in subparsers.choices.values():  # --debug also after the command's name
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see the module docstring for errors)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"splatcast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = error_message(e)
        if message is None:
            raise  # a bug: its traceback is the useful report
        if args.debug:
            traceback.print_exc()
        print(f"splatcast {args.command}: error: {message}", file=sys.stderr)
        return getattr(e, "exit_code", 1)


if __name__ == "__main__":  # python -m splatcast.cli: run the imported module, whose error classes commands raise
    from splatcast.cli import main as imported_main

    sys.exit(imported_main())
