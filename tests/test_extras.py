"""A missing optional library is reported as the one command that installs it, before any work, never as a
traceback or a hint that does not help ("rerun the same build")."""

import re
import sys
from pathlib import Path

import pytest

from dpo_diff.cli import main
from dpo_diff.extras import EXTRA_OF, available, install_command


def missing(monkeypatch, *modules):
    """Make ``modules`` unimportable, as when their extra is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_every_extra_module_is_installed_by_its_extra_in_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    package = {"yaml": "pyyaml"}  # import names that differ from the package name
    for module, extra in EXTRA_OF.items():
        names = {re.split(r"[<>=!~\[; ]", req)[0].lower() for req in extras[extra]}
        assert package.get(module, module.replace("_", "-")) in names, (module, extra)
    assert install_command("gradio.blocks") == "pip install 'dpo-diff[ui]'" and install_command("torch") is None


def test_the_web_app_without_gradio_names_the_ui_extra(tmp_path, capsys, monkeypatch):
    missing(monkeypatch, "gradio")
    assert not available("gradio")
    assert main(["ui", "--runs", str(tmp_path / "runs"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "dpo-diff ui: error: the web app needs gradio" in err and "pip install 'dpo-diff[ui]'" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_a_synonym_space_without_sentence_transformers_names_the_lexicon_extra(tmp_path, capsys, monkeypatch):
    module = "sentence_transformers"
    missing(monkeypatch, module)
    out = tmp_path / "spaces.json"
    assert main(["space", "build", "--prompt", "a red cat on a mat", "--kind", "synonym", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"needs {module}, which is not installed: pip install 'dpo-diff[lexicon]'" in err
    assert "rerun" not in err  # a rerun fails the same way


def test_an_import_error_of_a_required_module_stays_a_traceback(monkeypatch):
    import dpo_diff.commands.report as report

    def broken(args):
        import torch_not_a_module  # noqa: F401  - stands for a bug, not a missing extra

    monkeypatch.setattr(report, "run", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["report", "x"])


def test_the_web_app_shows_a_missing_extra_as_its_install_line():
    from dpo_diff.ui.jobs import error_line

    line = error_line(ModuleNotFoundError("No module named 'sentence_transformers'", name="sentence_transformers"))
    assert line == "the web app needs sentence_transformers, which is not installed: pip install 'dpo-diff[lexicon]'"
    assert error_line(ModuleNotFoundError("no", name="torchx")) == "ModuleNotFoundError: no"  # a bug: as it is
