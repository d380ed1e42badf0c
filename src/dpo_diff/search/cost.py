"""What model work costs in the budget's unit, full-generation equivalents (one full sampler run on one seed = 1).

Work is counted in denoiser calls, one per entry of the scheduler's ``timesteps``: DDIM, Euler and DPM++ make one
per sampling step, but Heun makes 2n - 1 for n steps and PNDM n + 1 (PLMS only) or n + 9 (with its Runge-Kutta
warm-up). Counting steps instead would make a Heun "k = 15" about 7.5 steps and charge the shortcut twice what it
runs. A classifier-free-guided call counts once (its batch of two rows, or FLUX's two transformer calls, are paid by
the full generation too), and the VAE decode and the judge, once per image either way, are left out.

:func:`generation_equivalents` (defined in :mod:`dpo_diff.fidelity`, which charges previews by it too) is the one
rule; :func:`shortcut_cost` applies it to the shortcut text gradient
(:mod:`dpo_diff.shortcut`) and :func:`generation_calls` counts a full generation's calls for a problem.
"""

from __future__ import annotations

from dpo_diff.fidelity import generation_equivalents  # the rule lives beside the fidelities it also charges


def shortcut_cost(prefix_calls: int, grad_calls: int, full_calls: int) -> float:
    """One shortcut pass on one seed: ``prefix_calls`` no-grad calls (k) and ``grad_calls`` grad-enabled ones (K),
    over the ``full_calls`` of a full generation. The backward pass is not charged extra (as in the paper)."""
    return generation_equivalents(prefix_calls + grad_calls, full_calls)


def generation_calls(problem) -> int:
    """Denoiser calls of one full generation with ``problem``'s sampling settings (the length of its scheduler's
    timesteps); a problem without a diffusion backend (e.g. a synthetic one) counts one call per step."""
    calls_for = getattr(problem, "calls_for", None)  # Problem counts (and caches) it from its scheduler
    if calls_for is not None:
        return calls_for()
    sc = problem.sampling
    backend = getattr(problem, "backend", None)
    if backend is None:
        return sc.steps
    return len(backend.new_scheduler(sc.steps, sc.height, sc.width).timesteps)
