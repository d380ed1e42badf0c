"""The shipped VQA world judge (``world:vqa``): caption negatives, loading through ``from_pretrained``, batching,
training/scoring agreement, and that it reads binding and relations on rendered scenes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dpo_diff.judges.spec import parse_judge
from dpo_diff.world.negatives import NEGATIVE_KINDS, is_true_of, negative_caption
from dpo_diff.world.prompts import is_heldout_caption
from dpo_diff.world.render import render_batch
from dpo_diff.world.scene import Scene, make_object, sample_scene

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def vqa():
    from dpo_diff.judges.spec import JudgeRegistry

    return JudgeRegistry("cpu").load("world:vqa")


def pixels(scenes) -> torch.Tensor:
    return torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255


def test_negatives_are_false_of_their_scene_and_cover_every_kind():
    rng = np.random.default_rng(123)
    kinds = Counter()
    for _ in range(300):
        scene = sample_scene(rng, p_pair=0.6)
        text, kind = negative_caption(scene, rng)
        kinds[kind] += 1
        assert not is_true_of(text, scene), (text, scene)
        assert not is_heldout_caption(text)
    assert set(kinds) == set(NEGATIVE_KINDS), kinds


def test_is_true_of_reads_binding_and_relations():
    rng = np.random.default_rng(0)
    scene = Scene((make_object("red", "circle", "big", "left", True, rng),
                   make_object("blue", "square", "small", "right", True, rng)))
    assert is_true_of("a red circle to the left of a blue square", scene)
    assert is_true_of("a blue square and a red circle", scene)  # "and": either order
    assert not is_true_of("a blue circle and a red square", scene)  # the same words, bound wrongly
    assert not is_true_of("a red circle to the right of a blue square", scene)


def test_world_vqa_spec_is_short_for_vqa_world_vqa_and_kinds_are_checked():
    assert str(parse_judge("world:vqa")) == "vqa:world:vqa"
    assert str(parse_judge("world:judge_b")) == "clip:world:judge_b"
    with pytest.raises(ValueError, match="is a vqa judge"):
        parse_judge("clip:world:vqa")
    with pytest.raises(ValueError, match="has no judge 'nope'"):
        parse_judge("world:nope")


def test_the_shipped_vqa_judge_loads_through_from_pretrained(vqa):
    from dpo_diff.world.load import verify_model_folder

    verify_model_folder("vqa")
    assert type(vqa.model).__name__ == "LlavaForConditionalGeneration" and vqa.name == "vqa:world:vqa"
    assert not any(p.requires_grad for p in vqa.model.parameters())


def test_training_rows_are_the_rows_the_judge_scores(vqa, load_script):
    train = load_script("scripts/train_world.py")
    tok = train.build_vqa_tokenizer()
    batcher = train.VqaBatcher(tok, 64)
    for text in ("a red circle", "two tiny green pyramids on a slate background", "a giant cyan trigon"):
        ids = vqa.model_inputs(pixels([sample_scene(np.random.default_rng(1))]), text)["input_ids"][0].tolist()
        assert ids == batcher.row(text)
        assert vqa.prompt_ids(text)[1] == batcher.yes
    rows = batcher(["a red circle", "a giant cyan trigon on a white background"], "cpu", captions=[True, False])
    assert rows["position_ids"][0, -1] == len(batcher.row("a red circle")) - 1  # left padding, positions from 0
    marked = rows["input_ids"][0][rows["labels"][0] != -100].tolist()
    assert tok.convert_ids_to_tokens(marked) == ["a", "red", "circle"]  # the captioning loss: true captions only
    assert (rows["labels"][1] == -100).all()


def test_batched_equals_one_at_a_time_and_the_gradient_reaches_the_image(vqa):
    rng = np.random.default_rng(5)
    images = pixels([sample_scene(rng) for _ in range(4)]).requires_grad_(True)
    texts = ["a red circle", "a blue square on the left", "a red circle", "two small green triangles"]
    batched = vqa.loss(images, texts)
    single = torch.cat([vqa.loss(images[i:i + 1], texts[i]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    batched.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["any", "relation"])
def test_a_true_caption_scores_below_a_false_one_on_rendered_scenes(vqa, kind):
    """Held-out draws (a seed the training's data streams never use): the judge prefers the true caption (measured
    0.83 on any negative, 0.67 on flipped relations; binding swaps are at chance, 0.52: the model card says so)."""
    rng = np.random.default_rng([2026, 12, 7])
    scenes, true, false = [], [], []
    while len(scenes) < 48:
        scene = sample_scene(rng, p_pair=1.0 if kind != "any" else 0.5)
        text, got = negative_caption(scene, rng)
        from dpo_diff.world.captions import caption

        positive = caption(scene, rng, "uniform")
        if kind != "any" and got != kind:
            continue
        scenes.append(scene)
        true.append(positive)
        false.append(text)
    with torch.no_grad():
        x = pixels(scenes)
        right, wrong = vqa.loss(x, true), vqa.loss(x, false)
    share = (right < wrong).float().mean().item()
    assert share >= {"any": 0.8, "relation": 0.6}[kind], share
