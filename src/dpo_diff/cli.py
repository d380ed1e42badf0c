"""The ``dpo-diff`` command line.

Each subcommand lives in ``dpo_diff/commands/<name>.py`` with two functions, ``add_arguments(parser)`` and
``run(args) -> int``. Heavy libraries (torch, diffusers, nltk) are imported inside ``run`` so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Add new subcommands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "optimize": ("dpo_diff.commands.optimize", "optimize a prompt (improve) or attack a model with DPO-Diff"),
    "space": ("dpo_diff.commands.space", "build or inspect search spaces (synonym, antonym, NPLib, hybrid)"),
    "demo": ("dpo_diff.commands.demo", "run DPO-Diff end to end on the bundled shapes-world models"),
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpo-diff", description=__doc__.splitlines()[0])
    from dpo_diff import __version__

    parser.add_argument("--version", action="version", version=f"dpo-diff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # subcommand not shipped in this build
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished work is saved in the output folder", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, OSError) as e:
        # ValueError subclasses carry our validation messages (they name what was given and what is allowed).
        print(f"dpo-diff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
