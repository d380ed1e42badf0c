"""benchmarks/judge_gap.py: attribute labels (binding), within-prompt AUC, the selection rules, and a whole prompt
record on a fake world whose judges and checker are known."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from dpo_diff.problem import SamplingConfig, Task
from dpo_diff.space import PromptPair, SearchSpace, Slot
from dpo_diff.world.checker import ObjectReading, SceneReading


@pytest.fixture(scope="module")
def gap(load_script):
    return load_script("benchmarks/judge_gap.py")


def reading(*objs, background="black", position=None):
    return SceneReading(tuple(ObjectReading(*o) for o in objs), position, background)


def test_binding_is_defined_only_where_every_word_is_present(gap):
    prompt = "a red circle to the left of a blue square"
    right = gap.attribute_labels(reading(("red", "circle", "small"), ("blue", "square", "small")), prompt)
    swapped = gap.attribute_labels(reading(("blue", "circle", "small"), ("red", "square", "small")), prompt)
    missing = gap.attribute_labels(reading(("green", "circle", "small"), ("blue", "square", "small")), prompt)
    assert right["binding"] is True and right["colour"] is True and right["position"] is True
    assert swapped["binding"] is False and swapped["colour"] is False
    assert "binding" not in missing and missing["colour"] is False  # a missing word is a colour error, not binding
    single = gap.attribute_labels(reading(("red", "circle", "big"), position="left"), "a big red circle on the left")
    assert "binding" not in single and single == {"all claims": True, "count": True, "colour": True, "shape": True,
                                                  "size": True, "position": True}
    assert swapped["all claims"] is False


def test_auc_pairs_within_prompts_and_counts_ties_half(gap):
    assert gap.within_prompt_pairs([0.1, 0.2], [0.3, 0.2]) == (3.5, 4)
    assert gap.within_prompt_pairs([], [0.3]) == (0.0, 0)
    auc, lo, hi, pairs = gap.pooled_auc([(4.0, 4), (0.0, 4), (0.0, 0)])
    assert (auc, pairs) == (0.5, 8) and 0.0 <= lo <= auc <= hi <= 1.0
    assert np.isnan(gap.pooled_auc([(0.0, 0)])[0])


class StubMemo:
    """Means per (candidate, judge) on the validation seeds and on seed 0 / the search seeds."""

    def __init__(self, table, user=(0, 0)):
        self.table, self.task = table, Task("improve")
        self.space = argparse.Namespace(default=user)

    def mean(self, c, seeds, field=0):
        judge = "clip" if field == 0 else field
        where = "val" if tuple(seeds) == (1, 2) else "search"
        return self.table[tuple(c)][judge][where]


def test_selection_rules_follow_the_first_judge_and_every_judge_must_agree(gap):
    table = {(0, 0): {"clip": {"search": 0.50, "val": 0.50}, "vqa": {"search": 1.0, "val": 1.0}},
             (1, 0): {"clip": {"search": 0.30, "val": 0.40}, "vqa": {"search": 1.2, "val": 1.2}},  # vqa vetoes
             (0, 1): {"clip": {"search": 0.35, "val": 0.49}, "vqa": {"search": 0.8, "val": 0.8}},
             (1, 1): {"clip": {"search": 0.40, "val": 0.60}, "vqa": {"search": 0.5, "val": 0.5}}}  # clip vetoes
    memo = StubMemo(table)
    cands = list(table)
    assert gap.selection_pick(memo, cands, 4, ()) == (1, 0)  # the search judge alone
    assert gap.selection_pick(memo, cands, 4, ("vqa",)) == (1, 1)  # vqa's favourite
    assert gap.selection_pick(memo, cands, 4, ("vqa", "clip")) == (0, 1)  # (1, 1) vetoed by clip
    assert gap.selection_pick(memo, [(0, 0), (1, 0)], 4, ("vqa", "clip")) == (0, 0)  # every one vetoed: the user
    assert gap.selection_pick(memo, cands, 1, ("vqa",)) == (0, 0)  # top 1 is (1, 0), which vqa vetoes


class FakeWorld:
    """A 2-slot antonym-like space; an image is a constant colour encoding its candidate; the checker reads it
    right exactly for candidate (1, 0); the 'clip' judge prefers dense negatives, 'vqa' prefers (1, 0)."""

    def __init__(self):
        self.space = SearchSpace("a red circle", (Slot("negative", "red", ("", "blue", "green"), 1),
                                                  Slot("negative", "circle", ("", "square"), 2)))
        self.task, self.sampling = Task("improve"), SamplingConfig(20, batch_size=4)
        self.generated = 0

    def calls_for(self, steps=None):
        return 20

    def generate(self, pairs: list[PromptPair], seeds):
        self.generated += len(pairs) * len(seeds)
        out = []
        for p in pairs:
            terms = [t for t in p.negative_prompt.split(", ") if t]
            value = {(): 0.05, ("blue",): 0.2, ("green",): 0.1}.get(tuple(terms), 0.1 * len(terms) + 0.5)
            out += [torch.full((3, 32, 32), value) for _ in seeds]
        return torch.stack(out)


class FakeJudge:
    def __init__(self, good):
        self.good = good

    def loss(self, images, text):
        v = images[:, 0, 0, 0]
        return (v - self.good).abs() if self.good is not None else 1.0 - v


class FakeChecker:
    def read(self, images):
        return [reading(("red", "circle", "big"), position="center") if abs(int(im[0, 0, 0]) - 51) <= 1
                else reading(("blue", "square", "big"), position="center") for im in images]


def test_a_prompt_record_measures_every_pick_and_the_summary_reads_it(gap):
    world = FakeWorld()
    judges = {"clip:fake": FakeJudge(None), "vqa:fake": FakeJudge(0.2)}
    memo = gap.ImageMemo(world, judges, FakeChecker())
    args = argparse.Namespace(pair_top=3, uniform=4, top=4, report=[100, 101], methods=["random", "greedy"],
                              roots=[0, 1], budget=40.0)
    rec = gap.prompt_record(memo, args)
    picks = rec["picks"]
    assert picks["user"]["all_correct"] == 0.0 and picks["checker's choice"]["all_correct"] == 1.0
    assert picks["vqa:fake exhaustive"]["candidates"] == picks["checker's choice"]["candidates"]
    assert picks["clip:fake exhaustive"]["changes"] == 2 and picks["clip:fake exhaustive"]["all_correct"] == 0.0
    assert {im["seed"] for im in rec["images"]} == {0, 1, 2}
    before = world.generated
    memo.fill([(1, 0)], [0, 1, 2, 100, 101])  # everything is memoised: nothing generated again
    assert world.generated == before
    # the searches: the search judge alone is gamed by dense negatives; vqa:fake selecting finds the right answer,
    # and so does the agreement (vqa:fake vetoes the dense answers the search judge prefers)
    assert picks["random at 40, re-ranked by clip:fake"]["all_correct"] == 0.0
    assert picks["random at 40, selected by vqa:fake"]["all_correct"] == 1.0
    assert picks["greedy at 40, agreement clip:fake + vqa:fake"]["all_correct"] == 1.0  # the denser ones vetoed
    rec["kind"] = "single"
    text = gap.summarise([rec, rec])
    assert "| colour | " in text and "gaming share" in text
    assert "clip:fake top 4, agreement clip:fake + vqa:fake" in text
    assert "vqa:fake says yes" in text


def test_images_round_trip_through_the_saved_file(gap, tmp_path):
    images = {((0, 1), 3): np.full((32, 32, 3), 7, np.uint8), ((1, 0), 0): np.zeros((32, 32, 3), np.uint8)}
    gap.save_images(tmp_path / "x.npz", images)
    back = gap.load_images(tmp_path / "x.npz")
    assert back.keys() == images.keys() and all((back[k] == images[k]).all() for k in images)


def test_only_development_prompt_seeds_are_taken(gap):
    with pytest.raises(SystemExit):
        gap.main(["--prompt-seed", "1006", "--summary-only", "--out", "unused"])


def test_world_quality_measures_any_judge_spec_as_it_measures_the_clip_judge(load_script):
    """``--judge-spec clip:world:judge`` reads the same losses as the benchmark's own CLIP code (so a VQA judge's
    AUCs are comparable with the CLIP judges' rows of the model card)."""
    from dpo_diff.world.prompts import sample_training_example
    from dpo_diff.world.render import render_batch

    wq = load_script("benchmarks/world_quality.py")
    rng = np.random.default_rng(3)
    pairs = [sample_training_example(rng, "judge") for _ in range(6)]
    images = render_batch([s for s, _ in pairs])
    texts = [t for _, t in pairs]
    own, spec = wq.Judge("cpu").loss(images, texts), wq.SpecJudge("clip:world:judge", "cpu").loss(images, texts)
    np.testing.assert_allclose(spec, own, rtol=1e-3, atol=1e-4)


def test_caption_negatives_table_has_every_kind_and_the_clip_judge_reads_attributes(gap):
    text = gap.caption_negatives(gap.load_judges(["world:judge"]), 40, seed=3)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert {"attribute", "binding", "relation", "other"} <= set(rows)
    share = float(rows["attribute"].split(" | ")[2].split(" ")[0])
    assert share >= 0.8  # the shipped CLIP judge tells a changed attribute from the true one


def test_rescoring_kept_images_adds_a_judge_and_its_exhaustive_choice(gap, tmp_path):
    class Brightness:  # lower loss for brighter images: picks candidate (1,) whose images are white
        def loss(self, images, text):
            return 1.0 - images.mean(dim=(1, 2, 3))

    white, black = np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)
    images = {((0,), s): black for s in (0, 1, 2)} | {((1,), s): white for s in (0, 1, 2)}
    gap.save_images(tmp_path / "a_red_disc.npz", images)
    labels = {(0,): True, (1,): False}  # the checker likes the dark candidate: the new judge's choice is wrong
    record = {"prompt": "a red disc", "judges": ["clip:old"], "images": [
        {"candidate": [c], "seed": s, "losses": {"clip:old": 0.1 if c == 0 else 0.2},
         "labels": {"all claims": labels[(c,)], "shape": labels[(c,)]}} for c in (0, 1) for s in (0, 1, 2)]}
    out = gap.rescored([record], tmp_path, {"bright": Brightness()})
    assert out[0]["judges"] == ["clip:old", "bright"] and record["judges"] == ["clip:old"]
    assert [im["losses"]["bright"] for im in out[0]["images"]] == [1.0] * 3 + [0.0] * 3
    assert gap.exhaustive_lines(out)[2:] == ["| checker | 100.0% |", "| clip:old | 100.0% |", "| bright | 0.0% |"]
