"""The evaluation pool: unseen, disjoint from the "v1" pool and between evaluation seeds; "v1" lists unchanged."""

import itertools
import json
from pathlib import Path

import pytest

from dpo_diff.world import heldout_prompts, is_heldout_caption, parse_caption, prompt_kind
from dpo_diff.world.captions import word_tier
from dpo_diff.world.prompts import (
    DEV_PROMPT_SEEDS,
    EVAL2_JUDGE_REPORT_SEEDS,
    EVAL2_REPORT_SEEDS,
    EVAL_IMAGE_SEEDS,
    EVAL_PROMPT_SEEDS,
    EVAL_QUALITY_SEEDS,
    EVAL_REPORT_SEEDS,
    EVAL_SELECT_SEEDS,
    HELDOUT_COMBOS,
    eval_pool,
    v1_pool,
)

KINDS = ("easy", "rare_word", "unseen_combo", "two_objects")
ROOT = Path(__file__).resolve().parents[2]


def test_v1_lists_are_unchanged_and_inside_the_v1_pool():
    assert heldout_prompts("easy", 3, seed=0) == heldout_prompts("easy", 3, seed=0, pool="v1")
    assert heldout_prompts("easy", 1, seed=0) == ["a big purple circle in the center"]  # the demo's attack prompt
    for seed in (0, 1, 7):
        assert set(heldout_prompts("easy", 50, seed=seed)) <= v1_pool("easy")
        for i, p in enumerate(heldout_prompts("hard", 51, seed=seed)):
            assert p in v1_pool(KINDS[1 + i % 3]), p
    for name in ("select_improve.json", "select_attack.json"):
        path = ROOT / "docs" / "world_bench" / name
        if path.exists():
            listed = set(json.loads(path.read_text()))
            assert listed <= set().union(*(v1_pool(k) for k in KINDS))


def test_the_eval_pool_is_unseen_and_disjoint_from_v1():
    used = set().union(*(v1_pool(k) for k in KINDS))
    sizes = {k: len(eval_pool(k)) for k in KINDS}
    assert sizes == {"easy": 351, "rare_word": 7228, "unseen_combo": 432, "two_objects": 9270}  # in the docs
    for kind in KINDS:
        pool = eval_pool(kind)
        assert len(set(pool)) == len(pool) and not used & set(pool)
        for p in pool[:300]:
            spec = parse_caption(p)
            assert not spec.unknown_words, p
            combo = spec.count == 1 and (spec.objects[0].colour, spec.objects[0].shape) in HELDOUT_COMBOS
            assert is_heldout_caption(p) or (kind == "unseen_combo" and combo), p
            if kind == "easy":
                assert spec.count == 1 and not combo and all(word_tier(w) <= 0 for w in p.split()), p
            if kind == "rare_word":
                assert any(word_tier(w) >= 2 for w in p.split()), p
            if kind == "two_objects":
                assert spec.count == 2, p


def test_evaluation_seeds_own_disjoint_prefix_stable_slices():
    easy = [heldout_prompts("easy", 50, seed=s, pool="eval") for s in EVAL_PROMPT_SEEDS]
    hard = [heldout_prompts("hard", 51, seed=s, pool="eval") for s in EVAL_PROMPT_SEEDS]
    for lists in (easy, hard):
        for a, b in itertools.combinations(lists, 2):
            assert not set(a) & set(b)
    assert heldout_prompts("hard", 9, seed=1000, pool="eval") == hard[0][:9]
    assert [prompt_kind(p) for p in hard[1][:3]] == ["rare_word", "unseen_combo", "two_objects"]
    assert all(prompt_kind(p) == "easy" for p in easy[2])
    with pytest.raises(ValueError, match="pre-registered"):
        heldout_prompts("easy", 5, seed=0, pool="eval")
    with pytest.raises(ValueError, match="too few"):
        heldout_prompts("easy", 100, seed=1000, pool="eval")
    with pytest.raises(ValueError):
        heldout_prompts("easy", 5, seed=1000, pool="v2")  # type: ignore[arg-type]


def test_protocol_seeds_do_not_overlap():
    assert not set(EVAL_PROMPT_SEEDS) & set(DEV_PROMPT_SEEDS)
    parts = [EVAL_SELECT_SEEDS, EVAL_REPORT_SEEDS, EVAL_QUALITY_SEEDS]
    assert sum(len(p) for p in parts) <= len(EVAL_IMAGE_SEEDS)
    assert len(set().union(*map(set, parts))) == sum(len(p) for p in parts)
    assert len(EVAL_QUALITY_SEEDS) == len(EVAL_PROMPT_SEEDS)
    assert min(EVAL_IMAGE_SEEDS) >= 9000
    assert EVAL2_REPORT_SEEDS == tuple(range(9010, 9018))  # registered for prompt seed 1006 on; never move it
    assert not set(EVAL2_REPORT_SEEDS) & set(EVAL_SELECT_SEEDS + EVAL_REPORT_SEEDS)
    assert EVAL2_JUDGE_REPORT_SEEDS == tuple(range(9018, 9026))  # registered for prompt seed 1007; never move it
    assert not set(EVAL2_JUDGE_REPORT_SEEDS) & set(EVAL_SELECT_SEEDS + EVAL_REPORT_SEEDS + EVAL2_REPORT_SEEDS)


def _longest_hard_list(seed: int) -> list[str]:
    """Everything a first-pool evaluation seed can ever return as hard prompts (its longest list)."""
    n = 3 * len(eval_pool("unseen_combo")[EVAL_PROMPT_SEEDS.index(seed)::5])
    return heldout_prompts("hard", n, seed=seed, pool="eval")


def test_first_pool_lists_are_the_ones_registered_evaluations_used():
    """The slices never move (a fixed stride, whatever seeds are added): the registered evaluation of prompt seed
    1004 drew its prompts from the first 240 hard and 256 hard prompts of its slice."""
    hard = set(heldout_prompts("hard", 256, seed=1004, pool="eval"))
    for task in ("improve", "attack"):
        path = ROOT / "docs" / "world_bench" / "registered_1004" / task / "records.jsonl"
        prompts = {json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()}
        assert prompts and prompts <= hard, task
    with pytest.raises(ValueError, match="too few"):
        heldout_prompts("hard", len(_longest_hard_list(1004)) + 3, seed=1004, pool="eval")


def test_the_eval2_pool_is_beyond_every_first_pool_seed_and_split_between_its_seeds():
    from dpo_diff.world.prompts import EVAL2_PROMPT_SEEDS, eval2_pool

    reachable = set().union(*(_longest_hard_list(s) for s in EVAL_PROMPT_SEEDS))
    used = reachable | set().union(*(v1_pool(k) for k in KINDS))
    lists = [heldout_prompts("hard", 200, seed=s, pool="eval2") for s in EVAL2_PROMPT_SEEDS]
    for a, b in itertools.combinations(lists, 2):
        assert not set(a) & set(b)
    for lst in lists:
        assert not used & set(lst)
        assert [prompt_kind(p) == "two_objects" for p in lst[:4]] == [False, True] * 2  # rare words, two objects
    assert len(eval2_pool("rare_word")) + len(eval2_pool("two_objects")) > 15000  # documented: 6793 + 8835
    assert not set(EVAL2_PROMPT_SEEDS) & (set(EVAL_PROMPT_SEEDS) | set(DEV_PROMPT_SEEDS))
    with pytest.raises(ValueError, match="pre-registered prompt seeds 1005-1014"):
        heldout_prompts("hard", 5, seed=1000, pool="eval2")
    with pytest.raises(ValueError, match="hard prompts only"):
        heldout_prompts("easy", 5, seed=1005, pool="eval2")
    with pytest.raises(ValueError, match="only"):
        eval2_pool("easy")
