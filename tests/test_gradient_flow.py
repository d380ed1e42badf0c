"""The shortcut text gradient on SD 3.x and FLUX.1 (tiny models): it reaches every slot's logits through *every* text
encoder, on the positive and the negative side (FLUX's negative side through true CFG), and the memory it keeps for
backward does not grow with the number of sampling steps."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.backends.base import load_backend
from dpo_diff.problem import Problem, SamplingConfig, Task
from dpo_diff.relax import WordMixture
from dpo_diff.space import space_from_substitutes

SPACE = space_from_substitutes("a red dog, on green grass", {"dog": ["golden retriever", "cat"]},
                               {"red": ["blue", "light blue"], "grass": ["sand"]})


def _per_encoder_gradients(backend, judge, space, guidance: float, monkeypatch):
    """``{(encoder name, side): grad of the loss w.r.t. the weights through that encoder only}``."""
    import dpo_diff.relax as relax

    recorded = []
    hook_for = relax.mixture_hook

    def recording(template, weights):
        hook = hook_for(template, weights)

        def wrapped(module, inputs, output):
            out = hook(module, inputs, output)
            recorded.append((module, template, out))
            return out

        return wrapped

    monkeypatch.setattr(relax, "mixture_hook", recording)
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=4, guidance_scale=guidance))
    weights = WordMixture(space.sizes).sample_weights(1.0, torch.Generator().manual_seed(0)).detach()
    weights.requires_grad_()
    loss = problem.relaxation()(weights, (0,), start_step=1, grad_steps=1).sum()
    outputs = [out for _, _, out in recorded]
    grads_out = torch.autograd.grad(loss, outputs, retain_graph=True, allow_unused=True)
    names = {id(v.token_embedding): v.name for v in backend.text_views()}
    result = {}
    for (module, template, out), g in zip(recorded, grads_out):
        assert g is not None, "an encoder's mixed embeddings do not reach the loss"
        side = "positive" if template.slot_indices and space.slots[template.slot_indices[0]].target == "positive" \
            else "negative"
        (result[names[id(module)], side],) = torch.autograd.grad(out, weights, g, retain_graph=True)
    return result


@pytest.mark.parametrize("which, guidance, encoders", [
    ("tiny_sd3", 4.0, ("CLIP-L", "CLIP-G", "T5")),
    ("tiny_flux", 4.0, ("CLIP", "T5")),  # negative slots through true CFG
])
def test_gradient_reaches_every_slot_through_every_encoder(which, guidance, encoders, judge, request, monkeypatch):
    backend = load_backend(request.getfixturevalue(which))
    grads = _per_encoder_gradients(backend, judge, SPACE, guidance, monkeypatch)
    assert set(grads) == {(e, s) for e in encoders for s in ("positive", "negative")}
    for (encoder, side), g in grads.items():
        for i in SPACE.slots_of(side):
            row = g[i, : SPACE.slots[i].size]
            assert (row != 0).all(), f"slot {i} ({side}) gets no gradient through {encoder}: {row.tolist()}"


def test_flux_positive_slots_without_cfg_and_negative_slots_need_true_cfg(tiny_flux_schnell, judge, monkeypatch):
    backend = load_backend(tiny_flux_schnell)
    attack = space_from_substitutes("a red dog, on green grass", {"dog": ["golden retriever", "cat"]})
    grads = _per_encoder_gradients(backend, judge, attack, 1.0, monkeypatch)
    assert set(grads) == {("CLIP", "positive"), ("T5", "positive")}
    assert all((g[0, :3] != 0).all() for g in grads.values())
    with pytest.raises(ValueError, match="negative-prompt slots.*true classifier-free guidance.*true_cfg_scale"):
        backend.relaxed_conditioning(SPACE, guidance_scale=1.0)


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_shortcut_memory_is_flat_in_the_number_of_steps(which, judge, request, load_script):
    """Bytes saved for backward by one GPO iteration at 4 and 16 steps (k = 15/50 of the steps, one grad step), with
    and without the backends' per-block checkpointing; against backprop through every step (without it)."""
    bench = load_script("benchmarks/shortcut_memory.py")
    backend = load_backend(request.getfixturevalue(which))
    problem = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig())
    for blocks in (True, False):
        backend.set_block_checkpointing(blocks)
        few, many = (bench.one_iteration(problem, steps, "shortcut")[0] for steps in (4, 16))
        assert few > 0 and many / few <= 1.05, (blocks, few, many)
    full = bench.one_iteration(problem, 4, "full")[0]
    # Backprop through all 4 steps keeps more (on tiny models the text encoders' share is large, so not 4x).
    assert full > 1.2 * few, (full, few)


@pytest.mark.parametrize("which, scheduler", [("tiny_sd3", "heun"), ("tiny_flux", "euler")])
def test_gradient_checkpointing_gives_the_same_gradient(which, scheduler, judge, request):
    """``SamplingConfig.grad_checkpointing`` recomputes the transformer calls (K = 2) and the decode in backward."""
    from dpo_diff.shortcut import SavedTensorBytes

    backend = load_backend(request.getfixturevalue(which), scheduler=scheduler)
    backend.set_block_checkpointing(False)  # the shortcut's whole-call checkpointing on its own
    results = []
    for checkpointing in (False, True):
        sampling = SamplingConfig(steps=5, guidance_scale=4.0, grad_checkpointing=checkpointing)
        relaxed = Problem(SPACE, Task("improve"), backend, judge, sampling).relaxation()
        mix = WordMixture(SPACE.sizes)
        with SavedTensorBytes() as saved:
            loss = relaxed(mix.sample_weights(1.0, torch.Generator().manual_seed(0)), (0,), start_step=1,
                           grad_steps=2).sum()
        loss.backward()
        results.append((mix.logits.grad, saved.bytes))
    (plain, plain_bytes), (ckpt, ckpt_bytes) = results
    assert plain.abs().max() > 0
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=1e-5)
    assert ckpt_bytes < plain_bytes  # the text encoders' share (kept either way) is large on tiny models


@pytest.mark.parametrize("which", ["tiny_sd3", "tiny_flux"])
def test_block_checkpointing_gives_the_same_gradient_and_keeps_less(which, judge, request):
    """The backends' default per-block checkpointing of the transformer and VAE (grad mode only) against none."""
    from dpo_diff.shortcut import SavedTensorBytes

    backend = load_backend(request.getfixturevalue(which))
    assert backend.block_checkpointing and backend.transformer.gradient_checkpointing
    results = {}
    for enabled in (True, False):
        backend.set_block_checkpointing(enabled)
        relaxed = Problem(SPACE, Task("improve"), backend, judge, SamplingConfig(steps=4, guidance_scale=4.0))
        mix = WordMixture(SPACE.sizes)
        with SavedTensorBytes() as saved:
            loss = relaxed.relaxation()(mix.sample_weights(1.0, torch.Generator().manual_seed(0)), (0,),
                                        start_step=1, grad_steps=1).sum()
        loss.backward()
        results[enabled] = (mix.logits.grad, saved.bytes)
    backend.set_block_checkpointing(True)
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-6, rtol=1e-5)
    print(f"saved for backward: {results[False][1] / 2**20:.2f} MB without, {results[True][1] / 2**20:.2f} MB with")
    assert results[True][1] < results[False][1]
