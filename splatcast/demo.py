"""Placeholder: replaced by the module that owns these commands (see docs/DESIGN.md)."""


def register(subparsers) -> None:
    pass
