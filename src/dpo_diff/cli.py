"""The ``dpo-diff`` command line.

Each subcommand lives in ``dpo_diff/commands/<name>.py`` with two functions, ``add_arguments(parser)`` and
``run(args) -> int``. Heavy libraries (torch, diffusers, nltk) are imported inside ``run`` so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from dpo_diff.extras import as_missing_extra

# name -> (module, one-line help). Add new subcommands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "optimize": ("dpo_diff.commands.optimize", "optimize a prompt (improve) or attack a model with DPO-Diff"),
    "space": ("dpo_diff.commands.space", "build or inspect search spaces (synonym, antonym, NPLib, hybrid)"),
    "demo": ("dpo_diff.commands.demo", "run DPO-Diff end to end on the bundled shapes-world models"),
    "select": ("dpo_diff.commands.select", "score user prompts and keep the hard ones (the paper's prompt selection)"),
    "bench": ("dpo_diff.commands.bench", "benchmark methods on a prompt set at equal budget (resumable, Ray)"),
    "report": ("dpo_diff.commands.report", "tables, curves and an HTML page of a benchmark folder"),
    "ui": ("dpo_diff.commands.ui", "a local web app: run searches in the browser, browse runs and benchmarks"),
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, the other subcommands' modules are not imported (their ``add_arguments`` may
    import torch, which e.g. ``dpo-diff report`` does not need)."""
    parser = argparse.ArgumentParser(prog="dpo-diff", description=__doc__.splitlines()[0])
    from dpo_diff import __version__

    parser.add_argument("--version", action="version", version=f"dpo-diff {__version__}")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic CUDA kernels, TF32 off (slower; also DPO_DIFF_DETERMINISTIC=1); what is "
                             "then reproducible on a GPU: docs/reproducibility.md")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)  # listed in the usage, never parsed in this call
            continue
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Skipped-line warnings of our files as one readable line; others as Python prints them."""
    from dpo_diff.files import FileWarning

    if issubclass(category, FileWarning):
        print(f"dpo-diff: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    # Before any heavy import (transformers and diffusers read these once): no torchvision-fallback or load warnings
    # on every start. A user's own setting wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    with warnings.catch_warnings():  # restored on return (main is also called in-process, e.g. by tests)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.deterministic or os.environ.get("DPO_DIFF_DETERMINISTIC", "") not in ("", "0"):
        from dpo_diff.device import use_deterministic  # imports torch: only when asked

        use_deterministic()
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished work is saved in the output folder", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, OSError, ImportError) as e:
        # An import error is the user's to fix when an extra installs the module; any other one is a bug.
        shown = as_missing_extra(e, f"dpo-diff {args.command}") if isinstance(e, ImportError) else e
        if os.environ.get("DPO_DIFF_DEBUG") or shown is None:  # full traceback on request, or for a bug
            raise
        # ValueError subclasses carry our validation messages (they name what was given and what is allowed).
        print(f"dpo-diff {args.command}: error: {shown}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
