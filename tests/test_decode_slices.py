"""The full sampler decodes in slices (issue 27): an out-of-memory in the VAE decode halves the slice and redoes the
decode only, keeping the batch's denoising steps; big images decode a few at a time from the start."""

from __future__ import annotations

import pytest
import torch

from dpo_diff.backends.base import DECODE_PIXELS, decode_in_slices


class DecodeOom:
    """Makes ``backend.decode`` run out of memory above ``limit`` images and counts the denoiser's calls."""

    def __init__(self, backend, limit: int, error: BaseException | None = None):
        self.backend, self.limit, self.sizes, self.unet_calls = backend, limit, [], 0
        self.error = error or torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.decode = backend.decode

    def __enter__(self):
        def decode(latents):
            self.sizes.append(len(latents))
            if len(latents) > self.limit:
                raise self.error
            return self.decode(latents)

        self.backend.decode = decode
        self.hook = self.backend.unet.register_forward_hook(lambda *a: setattr(self, "unet_calls",
                                                                               self.unet_calls + 1))
        return self

    def __exit__(self, *exc):
        del self.backend.decode
        self.backend.__dict__.pop("_decode_slice", None)
        self.hook.remove()


ROWS = (["a red dog", "a blue cat", "a green car", "a dog"], ["", "blurry", "", ""], [0, 1, 2, 3])


def test_a_decode_out_of_memory_redoes_only_the_decode(backend):
    reference = backend.generate(*ROWS, steps=4)
    with DecodeOom(backend, limit=1) as oom:
        images = backend.generate(*ROWS, steps=4)
    assert oom.unet_calls == 4, "the denoising steps were redone (or the batch failed)"
    assert oom.sizes == [4, 2, 1, 1, 1, 1]
    torch.testing.assert_close(images, reference, atol=1e-5, rtol=1e-5)


def test_a_cudnn_allocation_failure_in_the_decode_is_out_of_memory_too(backend):
    with DecodeOom(backend, limit=2, error=RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")) as oom:
        backend.generate(*ROWS, steps=3)
    assert oom.sizes == [4, 2, 2]


def test_other_decode_errors_propagate(backend):
    with DecodeOom(backend, limit=0, error=RuntimeError("illegal memory access")), \
            pytest.raises(RuntimeError, match="illegal memory access"):
        backend.generate(*ROWS, steps=2)


class FakeBackend:
    vae_scale_factor = 8

    def __init__(self):
        self.sizes = []

    def decode(self, latents):
        self.sizes.append(len(latents))
        return latents[:, :3] * 2


@pytest.mark.parametrize("px, per_call", [(512, 4), (1024, 1), (256, 16), (2048, 1)])
def test_big_images_decode_a_few_at_a_time(px, per_call):
    fake = FakeBackend()
    latents = torch.randn(16, 4, px // 8, px // 8)
    images = decode_in_slices(fake, latents)
    assert fake.sizes == [per_call] * (16 // per_call) and images.dtype == torch.float32
    torch.testing.assert_close(images, latents[:, :3] * 2)
    assert per_call * px * px <= max(DECODE_PIXELS, px * px)
