"""Shared fixtures: tiny random Stable Diffusion and CLIP folders, loaded through the public from_pretrained path."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def load_script():
    """Import a repository script (``benchmarks/x.py``, ``scripts/y.py``) as a module, by its path from the root."""

    def load(relpath: str):
        path = ROOT / relpath
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    from dpo_diff.testing import save_tiny_sd

    return str(save_tiny_sd(tmp_path_factory.mktemp("models") / "sd-eps", prediction_type="epsilon"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> str:
    from dpo_diff.testing import save_tiny_sd

    return str(save_tiny_sd(tmp_path_factory.mktemp("models") / "sd-v", prediction_type="v_prediction", seed=3))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> str:
    from dpo_diff.testing_sdxl import save_tiny_sdxl

    return str(save_tiny_sdxl(tmp_path_factory.mktemp("models") / "sdxl"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    from dpo_diff.testing import save_tiny_clip

    return str(save_tiny_clip(tmp_path_factory.mktemp("models") / "clip"))


@pytest.fixture(scope="session")
def backend(tiny_sd):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    return StableDiffusionBackend.from_pretrained(tiny_sd)


@pytest.fixture(scope="session")
def judge(tiny_clip):
    from dpo_diff.judges.clip import ClipJudge

    return ClipJudge.from_pretrained(tiny_clip)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> str:
    from dpo_diff.testing_flow import save_tiny_sd3

    return str(save_tiny_sd3(tmp_path_factory.mktemp("models") / "sd3"))


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> str:
    """FLUX.1-dev-shaped: the guidance embedding and the resolution-dependent shift."""
    from dpo_diff.testing_flow import save_tiny_flux

    return str(save_tiny_flux(tmp_path_factory.mktemp("models") / "flux-dev", variant="dev"))


@pytest.fixture(scope="session")
def tiny_flux_schnell(tmp_path_factory) -> str:
    from dpo_diff.testing_flow import save_tiny_flux

    return str(save_tiny_flux(tmp_path_factory.mktemp("models") / "flux-schnell", variant="schnell", seed=1))


CLI_PROMPT = "a red dog on the grass"


@pytest.fixture()
def space_file(tmp_path) -> str:
    """A spaces file for :data:`CLI_PROMPT`: synonym slots (attack) and antonym slots (improve)."""
    from dpo_diff.space import save_spaces, space_from_substitutes

    s = space_from_substitutes(CLI_PROMPT, {"dog": ["hound", "puppy"], "red": ["crimson"]},
                               {"red": ["blue", "green"], "grass": ["sand", "snow"]})
    path = tmp_path / "spaces.json"
    save_spaces([s], path)
    return str(path)
