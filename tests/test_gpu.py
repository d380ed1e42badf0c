"""GPU checks (opt-in: ``pytest -m gpu`` on a CUDA machine; ``scripts/gpu_suite.sh`` runs them with the benchmarks).

Random weights: costs do not depend on values. The measuring helper also runs on the CPU with the tiny model (the
last test, not marked ``gpu``), so its logic is checked where no GPU is available. When ``DPO_DIFF_GPU_RESULTS``
names a file, each measurement is appended to it as one JSON line (the suite's summary table reads them).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPO_PEAK_LIMIT = 8 * 2**30  # one GPO iteration of SD v1.x at 512 px, 50 steps


def record(**row) -> None:
    path = os.environ.get("DPO_DIFF_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def gpo_iteration(backend, judge, preset: str) -> tuple[torch.Tensor, int | None]:
    """One GPO iteration (``preset``'s settings, one search seed, 50 steps): the logit gradient and, on CUDA, the
    peak memory allocated during it."""
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.search.base import Evaluator
    from dpo_diff.search.gradient import GradientSearchConfig, train_mixture
    from dpo_diff.space import space_from_substitutes

    space = space_from_substitutes("a red car on a snowy road", antonyms={"red": ["blue"], "snowy": ["sunny"]})
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=50))
    config = GradientSearchConfig.preset(preset, iterations=1, min_iterations=1, budget_share=None, score_every=0)
    grads = []
    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    state = train_mixture(problem, Evaluator(problem, (0,), 10), config, seed=0,
                          on_iteration=lambda s: grads.append(s.mixture.logits.grad.clone()))
    assert not state.skipped and len(grads) == 1, "the GPO iteration did not run"
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return grads[0], peak


@pytest.mark.gpu
@needs_cuda
def test_same_seed_same_image_on_cpu_and_cuda(tiny_sd):
    """fp32 on both, TF32 off (PyTorch turns TF32 convolutions on by default, which alone moves the CUDA image by
    ~1e-3) and deterministic kernels: what is left is the order of float sums."""
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.device import deterministic_kernels

    cpu = StableDiffusionBackend.from_pretrained(tiny_sd).generate(["a red dog"], ["blurry"], [3], steps=6)
    with deterministic_kernels():
        gpu = StableDiffusionBackend.from_pretrained(tiny_sd, device="cuda").generate(["a red dog"], ["blurry"], [3],
                                                                                     steps=6)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_sd15_gpo_iteration_fits_8gb_with_a_nonzero_text_gradient(dtype, tmp_path):
    """Both presets: ``paper`` (one Gumbel sample) and the default ``robust`` (several, batched)."""
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.testing import random_backend, save_tiny_clip

    backend = random_backend("sd15", "cuda", dtype)
    judge = ClipJudge.from_pretrained(str(save_tiny_clip(tmp_path / "clip", image_size=224)), device="cuda")
    peaks = {}
    for preset in ("paper", "robust"):
        grad, peaks[preset] = gpo_iteration(backend, judge, preset)
        finite, nonzero = bool(torch.isfinite(grad).all()), bool(grad.abs().sum() > 0)
        record(check="gpo_iteration", dtype=dtype, preset=preset, peak_bytes=peaks[preset], finite=finite,
               nonzero=nonzero)
        assert finite and nonzero, f"{preset}: text gradient finite={finite} nonzero={nonzero}"
    for preset, peak in peaks.items():
        assert peak < GPO_PEAK_LIMIT, f"{preset}: one GPO iteration peaked at {peak / 2**30:.2f} GiB"


def test_gpu_measurement_runs_on_the_cpu_with_the_tiny_model(backend, judge):
    """The helper above, on the CPU (what can be checked without a GPU: it runs, finds a finite non-zero
    gradient, and reports no peak)."""
    grad, peak = gpo_iteration(backend, judge, "paper")
    assert peak is None
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    record(check="gpo_iteration", dtype=str(backend.dtype).removeprefix("torch."), preset="paper", peak_bytes=None,
           finite=True, nonzero=True)


def cuda_problem(tiny_sd, tiny_clip, dtype: str):
    """A GPO problem on the tiny model and judge on CUDA (10 steps, improve)."""
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.space import space_from_substitutes

    space = space_from_substitutes("a red car on a snowy road", antonyms={"red": ["blue"], "snowy": ["sunny"]})
    backend = StableDiffusionBackend.from_pretrained(tiny_sd, device="cuda", dtype=dtype)
    judge = ClipJudge.from_pretrained(tiny_clip, device="cuda")
    return Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=10))


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_out_of_memory_is_retried_after_the_failed_graph_is_freed(tiny_sd, tiny_clip):
    """A real CUDA OOM (an impossible allocation) right after a forward, its graph alive: the retry with a smaller
    chunk must start with that graph's memory released (issue #20, item 3)."""
    from dpo_diff.search.base import Evaluator
    from dpo_diff.search.gradient import GradientSearchConfig, train_mixture

    problem = cuda_problem(tiny_sd, tiny_clip, "fp16")
    relaxation, allocated, graph = problem.relaxation, [], []

    def failing_once():
        inner = relaxation()

        def loss(weights, seeds, **kw):
            allocated.append(torch.cuda.memory_allocated())
            out = inner(weights, seeds, **kw)
            if len(allocated) == 1:
                graph.append(torch.cuda.memory_allocated() - allocated[0])
                torch.empty(2**50, dtype=torch.uint8, device="cuda")  # raises torch.OutOfMemoryError
            return out

        return loss

    problem.relaxation = failing_once
    config = GradientSearchConfig(iterations=1, samples=2, sample_chunk=2, budget_share=None, min_iterations=1,
                                  score_every=0)
    state = train_mixture(problem, Evaluator(problem, (0,), 10), config, seed=0)
    left = allocated[1] - allocated[0]  # what the failed attempt still held when the retry's forward began
    ok = len(state.log) == 1 and graph[0] > 0 and left <= 0.05 * graph[0]
    record(check="oom_retry", dtype="fp16", graph_bytes=graph[0], left_bytes=left, ok=ok)
    assert ok, f"retry started with {left} of the failed graph's {graph[0]} bytes still allocated"


@pytest.mark.gpu
@needs_cuda
def test_an_fp16_gpo_run_recovers_from_gradient_overflow(tiny_sd, tiny_clip):
    """fp16 on CUDA with the text gradient forced to overflow above a loss scale of ~2200 (the loss passes through
    fp16 / 30, so its gradient is 30 x the scale in fp16): GPO halves the scale and redoes the iteration instead of
    failing (issue #20, item 4)."""
    from dpo_diff.search.base import Evaluator
    from dpo_diff.search.gradient import GradientSearchConfig, train_mixture

    problem = cuda_problem(tiny_sd, tiny_clip, "fp16")
    relaxation = problem.relaxation

    def overflowing():
        inner = relaxation()
        return lambda weights, seeds, **kw: (inner(weights, seeds, **kw).half() / 30).float() * 30

    problem.relaxation = overflowing
    config = GradientSearchConfig(iterations=3, samples=1, loss_scale=2.0**16, budget_share=None, min_iterations=1,
                                  score_every=0)
    grads = []
    state = train_mixture(problem, Evaluator(problem, (0,), 10), config, seed=0,
                          on_iteration=lambda s: grads.append(s.mixture.logits.grad.clone()))
    backoffs = len(state.loss_scale.backoffs)
    ok = (len(state.log) == 3 and backoffs > 0 and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
          and bool(torch.isfinite(state.mixture.logits).all()))
    record(check="fp16_overflow", dtype="fp16", backoffs=backoffs, final_scale=state.loss_scale.scale, ok=ok)
    assert ok, f"log {len(state.log)}, back-offs {state.loss_scale.backoffs}"


class OomJudge:
    """A judge that asks CUDA for an impossible allocation on more than two images: a real out-of-memory (the CUDA
    caching allocator's error, its cleanup and the retry), raised from the judge inside the back-off unit."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, images, texts):
        self.sizes.append(len(images))
        if len(images) > 2:
            torch.empty(2**50, dtype=torch.uint8, device="cuda")  # raises torch.OutOfMemoryError
        return self.inner.loss(images, texts)


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_out_of_memory_in_the_judge_halves_the_evaluation_batch(tiny_sd, tiny_clip):
    problem = cuda_problem(tiny_sd, tiny_clip, "fp16")
    cands = [(0, 0), (1, 0), (0, 1)]
    reference = problem.candidate_losses(cands, (0, 1))
    problem.judge = OomJudge(problem.judge)
    problem.sampling = type(problem.sampling)(steps=10, batch_size=8)
    losses = problem.candidate_losses(cands, (0, 1))
    ok = problem.judge.sizes[:2] == [6, 4] and max(problem.judge.sizes[2:]) == 2 and bool(
        torch.allclose(losses, reference, atol=1e-3))
    record(check="eval_oom", dtype="fp16", sizes=problem.judge.sizes, ok=ok)
    assert ok, f"judge batches {problem.judge.sizes}; losses {losses} vs {reference}"


@pytest.mark.gpu
@needs_cuda
def test_the_vqa_judge_scores_on_cuda_in_bf16_by_default(tmp_path):
    from dpo_diff.judges.spec import JudgeRegistry
    from dpo_diff.testing_vlm import save_tiny_llava

    judge = JudgeRegistry("cuda").load(f"vqa:{save_tiny_llava(tmp_path / 'llava')}")
    assert judge.model.dtype == torch.bfloat16 and judge.model.device.type == "cuda"
    images = torch.rand(4, 3, 32, 32, device="cuda", requires_grad=True)
    loss = judge.loss(images, "a red dog on the grass")
    loss.sum().backward()
    assert loss.shape == (4,) and torch.isfinite(loss).all() and images.grad.abs().sum() > 0


@pytest.mark.gpu
@needs_cuda
def test_sdxl_in_fp16_decodes_with_its_fp32_vae_on_cuda(tiny_sdxl):
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    backend = StableDiffusionXLBackend.from_pretrained(tiny_sdxl, device="cuda", dtype="fp16")
    assert backend.vae_dtype == torch.float32 and next(backend.vae.parameters()).dtype == torch.float32
    images = backend.generate(["a red dog", "a blue cat"], ["", "blurry"], [0, 1], steps=4)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
