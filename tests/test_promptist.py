import shutil

import pytest

from dpo_diff.baselines.promptist import PromptistRewriter, save_tiny_rewriter


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return save_tiny_rewriter(tmp_path_factory.mktemp("models") / "gpt2")


def test_loads_and_rewrites_deterministically(tiny_gpt2):
    rw = PromptistRewriter.from_pretrained(str(tiny_gpt2))
    assert len(rw.tokenizer) == 257 and rw.tokenizer.eos_token_id == 256
    prompts = ["a red dog on the grass", "a cat"]
    first, again = rw.rewrite(prompts), rw.rewrite(prompts)
    assert first == again  # beam search, no sampling
    assert all(isinstance(t, str) and t.strip() and "\ufffd" not in t for t in first)
    assert rw.describe()["num_beams"] == 8


def test_tokenizer_from_elsewhere_and_missing_model(tiny_gpt2, tmp_path):
    model_only = tmp_path / "model_only"
    model_only.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_gpt2 / f).exists():
            shutil.copy(tiny_gpt2 / f, model_only / f)
    rw = PromptistRewriter.from_pretrained(str(model_only), tokenizer=str(tiny_gpt2))
    assert rw.rewrite(["a cat"]) == PromptistRewriter.from_pretrained(str(tiny_gpt2)).rewrite(["a cat"])
    with pytest.raises(FileNotFoundError, match="no tokenizer for the Promptist rewriter"):
        PromptistRewriter.from_pretrained(str(tmp_path / "missing"), tokenizer=str(tmp_path / "missing"))
