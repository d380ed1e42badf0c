"""Device and dtype correctness without a GPU.

On a CUDA machine an op that mixes a CPU tensor with a CUDA tensor fails (0-dim CPU tensors excepted). On a
CPU-only machine every tensor is on the CPU, so such bugs hide. These tests put the models on the ``meta`` device
(shapes and dtypes, no values) and run the code under :class:`DeviceGuard`, which applies CUDA's rule to every
torch call: the meta device alone does not catch mixing in ``einsum``/``matmul`` (measured), the guard does.
A tensor the search creates on the CPU and forgets to move (Gumbel weights, latents, masks, normalisation
constants) therefore fails here as it would on a GPU.

Meta tensors have no values, so ``.item()`` cannot run on them. Two places read values and are worked around:
the scheduler's timesteps stay on the CPU (diffusers reads ``alphas_cumprod[t]``; 0-dim CPU tensors are legal
operands on CUDA too) and the judge's cached text features for the user prompt are pre-filled (transformers'
mask builder calls ``.item()``). Backward cannot run on meta either; gradients follow the forward's devices.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from dpo_diff.relax import WordMixture, encode_mixed, negative_template, positive_template
from dpo_diff.space import space_from_substitutes

META = torch.device("meta")
_TRANSFERS = {"to", "copy_", "cpu", "cuda", "type_as"}  # ops whose job is to move a tensor between devices


class DeviceMixError(AssertionError):
    pass


class DeviceGuard(TorchFunctionMode):
    """Raise when a torch call mixes devices (CUDA's rule: 0-dim CPU tensors are allowed with any device) or
    floating tensors of different dtypes (>= 1-dim; a silent promotion, e.g. fp32 noise upcasting fp16 latents).

    ``device``: where the backend was put; ``seen`` collects every device a tensor argument was on (0-dim CPU
    scalars aside), so a test can also assert that the work really ran there.
    """

    def __init__(self, device: torch.device, check_dtype: bool = True) -> None:
        super().__init__()
        self.device, self.check_dtype = torch.device(device), check_dtype
        self.seen: set[torch.device] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name not in _TRANSFERS and not name.startswith("__get"):
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            devices = {t.device for t in tensors if not (t.dim() == 0 and t.device.type == "cpu")}
            self.seen |= devices
            if len(devices) > 1:
                raise DeviceMixError(f"{name} mixes devices {sorted(map(str, devices))} "
                                     f"(the backend is on {self.device})")
            floats = {t.dtype for t in tensors if t.is_floating_point() and t.dim() > 0}
            if self.check_dtype and len(floats) > 1:
                raise DeviceMixError(f"{name} mixes dtypes {sorted(map(str, floats))}")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def space():
    return space_from_substitutes("a red dog on grass", {"dog": ["cat", "golden retriever"]},
                                  {"red": ["blue"], "grass": ["sand"]})


def meta_backend(folder: str, dtype: str):
    from dpo_diff.backends.diffusers_sd import StableDiffusionBackend

    backend = StableDiffusionBackend.from_pretrained(folder, device="meta", dtype=dtype)
    make = backend.new_scheduler

    def new_scheduler(num_steps=None, height=None, width=None):  # CPU timesteps: meta cannot give diffusers values
        sched = make()
        if num_steps is not None:
            sched.set_timesteps(num_steps, device="cpu")
        return sched

    backend.new_scheduler = new_scheduler
    return backend


def test_the_guard_catches_what_meta_alone_misses():
    w, emb = torch.rand(3), torch.empty(3, 2, 4, device=META)
    torch.einsum("o,old->ld", w, emb)  # meta alone lets this through (it would fail on CUDA)
    with DeviceGuard(META), pytest.raises(DeviceMixError, match="einsum mixes devices"):
        torch.einsum("o,old->ld", w, emb)
    with DeviceGuard(META):
        torch.einsum("o,old->ld", w.to(META), emb)
        emb * torch.tensor(2.0)  # a 0-dim CPU scalar is fine, as on CUDA


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("batch", [None, 3])
def test_cpu_gumbel_weights_are_mixed_on_the_text_encoders_device(tiny_sd, space, dtype, batch):
    """The bug of issue 10: Gumbel weights from a CPU generator met a CUDA embedding table in the hook's einsum."""
    backend = meta_backend(tiny_sd, dtype)
    mixture = WordMixture(space.sizes)  # lives on the CPU, as in GPO
    gen = torch.Generator().manual_seed(0)
    weights = mixture.sample_weights(1.0, gen) if batch is None else mixture.sample_weights(1.0, gen, num=batch)
    assert weights.device.type == "cpu"
    guard = DeviceGuard(backend.device)
    with guard:
        for template in (positive_template(space, backend.tokenizer), negative_template(space, backend.tokenizer)):
            out = encode_mixed(backend, template, weights)
            assert out.device == backend.device and out.dtype == backend.dtype
            assert out.shape[0] == (batch or 1)
    assert META in guard.seen


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_relaxed_loss_and_exact_generation_run_on_the_backends_device(tiny_sd, tiny_clip, space, dtype):
    """Everything the shortcut and the sampler create (latents, timesteps, x0 jump, decode, judge preprocessing)."""
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.problem import Problem, SamplingConfig, Task

    backend = meta_backend(tiny_sd, dtype)
    judge = ClipJudge.from_pretrained(tiny_clip, device=META)
    dim = judge.model.config.projection_dim
    judge._text_cache[space.prompt] = torch.zeros(dim, device=META)  # see the module docstring
    problem = Problem(space, Task("improve"), backend, judge, SamplingConfig(steps=4, guidance_scale=7.5))
    weights = WordMixture(space.sizes).sample_weights(1.0, torch.Generator().manual_seed(1))
    guard = DeviceGuard(backend.device)
    with guard:
        relaxed = problem.relaxation()
        losses = relaxed(weights, (0, 1), start_step=1, grad_steps=2)
        assert losses.shape == (2,) and losses.device == META
        batch = WordMixture(space.sizes).sample_weights(1.0, torch.Generator().manual_seed(2), num=3)
        losses = relaxed(batch, (0, 0, 0), start_step=1, grad_steps=1)  # GPO's batched Gumbel samples
        assert losses.shape == (3,) and losses.device == META
        images = backend.generate([space.prompt] * 2, ["blue", ""], [0, 1], steps=3)
        assert images.device == META and images.dtype == torch.float32
        assert judge.loss(images, space.prompt).device == META
    assert META in guard.seen


def test_word_mixture_on_a_device_keeps_cpu_generators():
    """A mixture moved to the device still draws its noise from CPU generators (same noise on every machine)."""
    mixture = WordMixture((3, 2, 4)).to(META)
    with DeviceGuard(META):
        w = mixture.sample_weights(1.0, torch.Generator().manual_seed(0))
        wb = mixture.sample_weights(1.0, torch.Generator().manual_seed(0), num=2)
        hot = mixture.one_hot((2, 1, 3))
        probs = mixture.probs()
    for t in (w, wb, hot, probs):
        assert t.device == META and t.dtype == torch.float32
    assert wb.shape == (2, 3, 4)


def test_gumbel_weights_do_not_depend_on_the_logits_device_or_batching():
    mixture = WordMixture((3, 2, 4))
    one = mixture.sample_weights(1.0, torch.Generator().manual_seed(5))
    many = mixture.sample_weights(1.0, torch.Generator().manual_seed(5), num=3)
    torch.testing.assert_close(many[0], one, rtol=0, atol=0)  # sample 0 of a batch is the unbatched draw
    assert not torch.equal(many[1], many[0])
    torch.testing.assert_close(many.sum(-1), torch.ones(3, 3))
    assert (many[:, 1, 2:] == 0).all()  # masked options stay at zero


def test_a_batch_of_mixtures_equals_one_call_per_row(backend, space):
    """``weights[B, S, O]`` gives B rows, each the encoding of its own mixture, with the same gradients."""
    mixture = WordMixture(space.sizes)
    weights = mixture.sample_weights(1.0, torch.Generator().manual_seed(2), num=3).detach().requires_grad_()
    for template in (positive_template(space, backend.tokenizer), negative_template(space, backend.tokenizer)):
        batched = encode_mixed(backend, template, weights)
        assert batched.shape == (3, backend.max_length, backend.text_encoder.config.hidden_size)
        (g_batched,) = torch.autograd.grad(batched.pow(2).sum(), weights)
        rows, grads = [], []
        for b in range(3):
            row = weights[b].detach().requires_grad_()
            rows.append(encode_mixed(backend, template, row))
            grads.append(torch.autograd.grad(rows[-1].pow(2).sum(), row)[0])
        torch.testing.assert_close(batched, torch.cat(rows), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g_batched, torch.stack(grads), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[S, O\] or \[B, S, O\]"):
        encode_mixed(backend, template, weights[0, 0])
