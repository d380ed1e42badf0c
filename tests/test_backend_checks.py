"""What the SD backends refuse or read from the model's own configuration: an encoder that masks its padding, a
guidance-embedding (LCM) UNet, and the x0 jump of a scheduler with continuous timesteps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dpo_diff.backends.text import TextView


def test_an_encoder_that_masks_its_padding_is_refused(backend):
    """The pipelines mask the padding of such an encoder; neither the exact encoding nor the relaxation does."""
    encoder = SimpleNamespace(config=SimpleNamespace(use_attention_mask=True))
    with pytest.raises(ValueError, match=r"text encoder's config sets use_attention_mask=True .* unset or False"):
        TextView(backend.tokenizer, encoder, device=torch.device("cpu"))
    assert TextView(backend.tokenizer, SimpleNamespace(config=SimpleNamespace()), device=torch.device("cpu"))
