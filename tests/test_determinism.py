"""The deterministic mode (issue 27): ``dpo-diff --deterministic`` / ``DPO_DIFF_DETERMINISTIC=1`` switch PyTorch to
deterministic kernels with TF32 off; the context manager the GPU parity test uses restores every flag."""

from __future__ import annotations

import os

import pytest
import torch

from dpo_diff import cli
from dpo_diff.device import deterministic_kernels


def flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def test_the_context_sets_deterministic_kernels_without_tf32_and_restores_the_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = flags()
    with deterministic_kernels():
        assert flags() == (True, True, False, False, False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert flags() == before


@pytest.mark.parametrize("argv, env", [(["--deterministic"], {}), ([], {"DPO_DIFF_DETERMINISTIC": "1"}),
                                       ([], {}), ([], {"DPO_DIFF_DETERMINISTIC": "0"})])
def test_the_cli_flag_and_the_environment_turn_it_on(argv, env, monkeypatch, tmp_path):
    import dpo_diff.device as device

    calls = []
    monkeypatch.setattr(device, "use_deterministic", lambda on=True: calls.append(on))
    monkeypatch.delenv("DPO_DIFF_DETERMINISTIC", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from dpo_diff.space import save_spaces, space_from_substitutes

    save_spaces([space_from_substitutes("a red dog", antonyms={"red": ["blue"]})], tmp_path / "s.json")
    assert cli.main([*argv, "space", "show", str(tmp_path / "s.json")]) == 0
    on = "--deterministic" in argv or env.get("DPO_DIFF_DETERMINISTIC") == "1"
    assert calls == ([True] if on else [])
