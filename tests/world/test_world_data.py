"""The shapes world without models: renderer, captions, parser, held-out split, substitutes (fast, numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from dpo_diff.space import space_from_substitutes
from dpo_diff.world import heldout_prompts, is_heldout_caption, parse_caption, world_substitutes
from dpo_diff.world.captions import COLOUR_WORDS, SKEWED_WEIGHTS, VOCABULARY, caption, word_tier
from dpo_diff.world.prompts import HELDOUT_COMBOS, sample_training_example, scene_for_prompt
from dpo_diff.world.render import render
from dpo_diff.world.scene import BACKGROUNDS, COLOURS, Scene, make_object, sample_scene


def test_renderer_and_captions_are_deterministic():
    def draw(seed: int):
        rng = np.random.default_rng(seed)
        pairs = [sample_training_example(rng, "generator") for _ in range(20)]
        return [render(s) for s, _ in pairs], [t for _, t in pairs]

    imgs_a, caps_a = draw(5)
    imgs_b, caps_b = draw(5)
    imgs_c, caps_c = draw(6)
    assert caps_a == caps_b and all(np.array_equal(a, b) for a, b in zip(imgs_a, imgs_b, strict=True))
    assert caps_a != caps_c
    assert imgs_a[0].shape == (32, 32, 3) and imgs_a[0].dtype == np.uint8


def test_render_paints_the_object_colour_at_its_centre_and_background_at_the_corner():
    obj = make_object("blue", "square", "big", "left", pair=False)
    img = render(Scene((obj,), "gray"))
    assert tuple(img[int(obj.y), int(obj.x)]) == COLOURS["blue"]
    assert tuple(img[0, 31]) == BACKGROUNDS["gray"]


def object_pixels(img: np.ndarray, background: str) -> np.ndarray:
    return np.abs(img.astype(int) - np.array(BACKGROUNDS[background])).sum(-1) > 60


def test_rounding_blunts_corners_and_leaves_discs_and_small_shapes_alone():
    square = Scene((make_object("blue", "square", "big", "center", pair=False),), "black")
    plain = render(square)
    # the opening path with (almost) no rounding draws what the plain path draws (one grey level of rounding apart)
    assert np.abs(render(square, 1e-6).astype(int) - plain).max() <= 1
    rounded = render(square, 0.35)
    obj = square.objects[0]
    corner = (int(obj.y - 0.8 * obj.radius), int(obj.x - 0.8 * obj.radius))  # just inside the square's corner
    assert tuple(plain[corner]) == COLOURS["blue"] and tuple(rounded[corner]) != COLOURS["blue"]
    assert tuple(rounded[int(obj.y), int(obj.x)]) == COLOURS["blue"]
    area = object_pixels(rounded, "black").sum() / object_pixels(plain, "black").sum()
    assert 0.85 < area < 1.0  # corners go, the square stays
    disc = Scene((make_object("red", "circle", "big", "center", pair=False),), "gray")
    # a disc is open under the opening: only its anti-aliased rim moves, by a few levels
    assert np.abs(render(disc, 0.35).astype(int) - render(disc)).max() <= 10
    tiny = Scene((make_object("green", "triangle", "small", "left", pair=True),), "white")
    assert object_pixels(render(tiny, 0.35), "white").sum() >= 0.6 * object_pixels(render(tiny), "white").sum()


def test_parse_recovers_every_stated_attribute_of_sampled_captions():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene, text = sample_training_example(rng, "judge")
        spec = parse_caption(text)
        assert spec.unknown_words == [], text
        assert spec.count == len(scene.objects), text
        if spec.background is not None:
            assert spec.background == scene.background, text
        objs = scene.objects if spec.ordered else None
        for i, o in enumerate(spec.objects):
            candidates = [objs[i]] if objs is not None else list(scene.objects)
            assert any(
                all(getattr(o, a) in (None, getattr(c, a)) for a in ("colour", "shape", "size", "position"))
                for c in candidates
            ), (text, o, scene)


def test_parser_reports_words_it_cannot_judge():
    spec = parse_caption("a fluffy red circle next to a dog")
    assert spec.unknown_words == ["fluffy", "next", "dog"]
    assert spec.objects[0].colour == "red" and spec.objects[0].shape == "circle"


def test_generator_training_skews_synonyms_and_never_shows_heldout_combos_or_captions():
    rng = np.random.default_rng(1)
    counts = {w: 0 for w in COLOUR_WORDS["red"]}
    for _ in range(3000):
        scene, text = sample_training_example(rng, "generator")
        assert not is_heldout_caption(text)
        assert not any((o.colour, o.shape) in HELDOUT_COMBOS for o in scene.objects), text
        for w in text.split():
            if w in counts:
                counts[w] += 1
    assert counts["red"] > 10 * counts["crimson"]
    assert counts["red"] * SKEWED_WEIGHTS[2] * 5 > counts["scarlet"]  # rare words stay rare


def test_judge_training_sees_synonyms_uniformly():
    rng = np.random.default_rng(2)
    counts = {w: 0 for w in COLOUR_WORDS["red"]}
    for _ in range(3000):
        for w in sample_training_example(rng, "judge")[1].split():
            if w in counts:
                counts[w] += 1
    assert min(counts.values()) > 0.5 * max(counts.values())


def test_heldout_prompts_are_deterministic_distinct_and_unseen():
    easy = heldout_prompts("easy", 40, seed=3)
    assert easy == heldout_prompts("easy", 40, seed=3) and easy != heldout_prompts("easy", 40, seed=4)
    assert len(set(easy)) == 40 and all(is_heldout_caption(p) for p in easy)
    for p in easy:
        spec = parse_caption(p)
        assert spec.count == 1 and not spec.unknown_words
        assert all(word_tier(w) <= 0 for w in p.split()), p
        assert (spec.objects[0].colour, spec.objects[0].shape) not in HELDOUT_COMBOS
    hard = heldout_prompts("hard", 30, seed=3)
    assert len(set(hard)) == 30
    for p in hard:
        spec = parse_caption(p)
        assert not spec.unknown_words
        rare = any(word_tier(w) >= 2 for w in p.split())
        combo = spec.count == 1 and (spec.objects[0].colour, spec.objects[0].shape) in HELDOUT_COMBOS
        assert rare or combo or (spec.count == 2 and is_heldout_caption(p)), p
    with pytest.raises(ValueError):
        heldout_prompts("medium", 3)  # type: ignore[arg-type]


def test_world_substitutes_build_a_space():
    prompt = "a small crimson trigon on the left"
    syn, ant = world_substitutes(prompt)
    assert syn["crimson"][0] == "red" and "crimson" not in syn["crimson"]
    assert ant["left"] == ["right"] and "big" in ant["small"] and "triangle" not in ant["trigon"]
    assert set(syn) | set(ant) <= set(prompt.split())
    space = space_from_substitutes(prompt, syn, ant)
    assert space.render(tuple(0 for _ in space.slots)).prompt == prompt
    # Plural shapes keep plural substitutes.
    syn, ant = world_substitutes("two big blue circles on a white background")
    assert "discs" in syn["circles"] and "squares" in ant["circles"] and ant["white"] == ["black", "gray"]
    assert "a" not in ant  # the article of "on a white background" is no count


def test_scene_for_prompt_satisfies_the_prompt():
    rng = np.random.default_rng(0)
    for p in heldout_prompts("hard", 30, seed=1) + heldout_prompts("easy", 30, seed=1):
        scene = scene_for_prompt(p, rng)
        spec = parse_caption(p)
        assert len(scene.objects) == spec.count
    with pytest.raises(ValueError):
        scene_for_prompt("a dog", rng)


def test_vocabulary_covers_captions():
    rng = np.random.default_rng(4)
    for _ in range(200):
        s = sample_scene(rng)
        assert set(caption(s, rng, "uniform").split()) <= VOCABULARY


def test_prompt_kind_labels_the_heldout_sets():
    from dpo_diff.world import prompt_kind

    assert {prompt_kind(p) for p in heldout_prompts("easy", 20)} == {"easy"}
    kinds = [prompt_kind(p) for p in heldout_prompts("hard", 9)]
    assert kinds == ["rare_word", "unseen_combo", "two_objects"] * 3
    assert prompt_kind("a red dog") == "other"


def test_demo_improve_prompt_is_a_heldout_hard_prompt_the_world_can_judge():
    from dpo_diff.commands.demo import DEMO_IMPROVE_PROMPT

    assert is_heldout_caption(DEMO_IMPROVE_PROMPT)  # no model trained on it
    assert DEMO_IMPROVE_PROMPT in heldout_prompts("hard", 300)
    assert not parse_caption(DEMO_IMPROVE_PROMPT).unknown_words
