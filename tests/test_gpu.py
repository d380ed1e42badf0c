"""GPU checks (opt-in: ``pytest -m gpu`` on a CUDA machine). Random weights: costs do not depend on values."""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_same_seed_same_image_on_cpu_and_cuda(tiny_sd):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    cpu = StableDiffusionBackend.from_pretrained(tiny_sd).generate(["a red dog"], ["blurry"], [3], steps=6)
    gpu = StableDiffusionBackend.from_pretrained(tiny_sd, device="cuda").generate(["a red dog"], ["blurry"], [3],
                                                                                 steps=6)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_sd15_shortcut_iteration_fits_8gb_with_a_nonzero_text_gradient(dtype, tmp_path):
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.search.base import Evaluator
    from dpo_diff.search.gradient import GradientSearchConfig, train_mixture
    from dpo_diff.space import space_from_substitutes
    from dpo_diff.testing import random_backend, save_tiny_clip

    backend = random_backend("sd15", "cuda", dtype)
    judge = ClipJudge.from_pretrained(str(save_tiny_clip(tmp_path / "clip", image_size=224)), device="cuda")
    space = space_from_substitutes("a red car on a snowy road", antonyms={"red": ["blue"], "snowy": ["sunny"]})
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=50))
    grads = []
    torch.cuda.reset_peak_memory_stats()
    train_mixture(problem, Evaluator(problem, (0,), 10), GradientSearchConfig(iterations=1), seed=0,
                  on_iteration=lambda s: grads.append(s.mixture.logits.grad.clone()))
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    assert torch.cuda.max_memory_allocated() < 8 * 2**30
