"""`mrad` command line. Every module in this package that defines COMMAND (its sub-command name) and
`add_parser(subparsers, name)` is a sub-command; add a file to add a command."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import MRADError


def commands() -> dict:
    """{sub-command name: module}, in alphabetical order of the name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "COMMAND"):
            found[module.COMMAND] = module
    return dict(sorted(found.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrad", description="MRAD zero-shot anomaly detection (ICLR 2026)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in commands().items():
        module.add_parser(sub, name)
    return parser


def main(argv=None, settings=None) -> int:
    """Run one sub-command. The environment is read here, once (Settings.from_env), unless `settings` are given."""
    from ..settings import Settings

    args = build_parser().parse_args(argv)
    try:
        args.settings = settings or Settings.from_env()
        return args.run(args) or 0
    except MRADError as e:
        print(f"mrad {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrad {args.command}: interrupted", file=sys.stderr)
        return 130
