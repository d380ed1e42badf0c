import math

import pytest
import torch

from dpo_diff.judges.clip import spherical_loss


def test_spherical_loss_hand_values():
    e = torch.eye(3)
    assert spherical_loss(e[:1], e[:1]).item() == pytest.approx(0.0, abs=1e-6)
    assert spherical_loss(e[:1], e[1:2]).item() == pytest.approx(math.pi**2 / 8, rel=1e-5)  # orthogonal: 2*(pi/4)^2
    assert spherical_loss(e[:1], -e[:1]).item() == pytest.approx(math.pi**2 / 2, rel=1e-5)  # opposite: 2*(pi/2)^2
    x = torch.tensor([[3.0, 4.0]])  # unnormalised input: normalised inside; cos = 0.6
    y = torch.tensor([[1.0, 0.0]])
    assert spherical_loss(x, y).item() == pytest.approx(math.acos(0.6) ** 2 / 2, rel=1e-5)


def test_preprocess_keeps_channels_and_crops_the_centre(judge):
    img = torch.zeros(1, 3, 40, 64)
    img[:, 0] = 1.0  # pure red
    px = judge.preprocess(img)
    assert px.shape == (1, 3, 32, 32)
    expected = (torch.tensor([1.0, 0.0, 0.0]) - judge.mean.view(3)) / judge.std.view(3)
    torch.testing.assert_close(px[0, :, 16, 16], expected, atol=1e-4, rtol=0)
    # a non-square image is resized on its shortest side, then centre-cropped (not squashed, not transposed)
    wide = torch.zeros(1, 3, 32, 96)
    wide[..., 32:64] = 1.0  # white band in the centre third
    px = judge.preprocess(wide)
    torch.testing.assert_close(px[0, :, 16, 16], (1 - judge.mean.view(3)) / judge.std.view(3), atol=1e-3, rtol=0)


def test_judge_loss_is_differentiable_in_the_images(judge):
    img = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss = judge.loss(img, "a red circle")
    assert loss.shape == (2,)
    loss.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_text_features_are_unit_and_cached(judge):
    f = judge.text_features(["a cat", "a dog", "a cat"])
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(f[0], f[2])
    assert "a cat" in judge._text_cache


def test_bad_images_shape(judge):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        judge.preprocess(torch.rand(2, 16, 16, 3))
