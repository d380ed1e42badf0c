"""Selection judges: the re-ranking's answer must be preferred to the user prompt by every selection judge (the
agreement rule against judge gaming), on synthetic problems with fake judges whose losses the tests set."""

from __future__ import annotations

import json

import pytest
import torch

from dpo_diff.search.api import search
from dpo_diff.search.selection import SelectionConfig
from dpo_diff.testing import SyntheticProblem, synthetic_space

VALIDATION = (5, 6)
BUDGET = 40  # 81 candidates on one seed do not fit: a real search, then 4 candidates re-ranked on 2 seeds (8)


class ImageProblem(SyntheticProblem):
    """A synthetic problem that also "generates" prompt pairs: each image is a row ``[*candidate, seed]``, so a fake
    judge can score the candidate it shows. Every call of :meth:`losses` is logged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.candidate_of = {self.space.render(self.space.default): tuple(self.space.default)}
        self.generated: list[tuple[list[tuple[int, ...]], tuple[int, ...]]] = []

    def render(self, candidate):
        pair = self.space.render(candidate)
        self.candidate_of[pair] = tuple(candidate)
        return pair

    def losses(self, pairs, seeds, keep_images=False):
        cands = [self.candidate_of[p] for p in pairs]
        self.generated.append((cands, tuple(seeds)))
        images = torch.tensor([[*c, s] for c in cands for s in seeds], dtype=torch.float32)
        return self.candidate_losses(cands, seeds), (images if keep_images else None)


class FakeJudge:
    """Loss ``losses[candidate]`` (``default`` for any other), the same on every seed; counts scored images."""

    def __init__(self, losses: dict[tuple[int, ...], float], default: float = 0.5) -> None:
        self.losses, self.default, self.scored = losses, default, 0

    def loss(self, images, text):
        assert not torch.is_grad_enabled()  # scored under no_grad
        self.scored += len(images)
        return torch.tensor([self.losses.get(tuple(int(x) for x in row[:-1]), self.default) for row in images])


def problem(task: str = "improve") -> ImageProblem:
    return ImageProblem(synthetic_space(4, 3), task, seed=3, noise=0.0)


def selection(judges=()) -> SelectionConfig:
    return SelectionConfig(rerank_top=4, validation_seeds=VALIDATION, max_share=0.5, judges=judges)


def top_four(task: str = "improve") -> list[tuple[int, ...]]:
    """The 4 candidates the re-ranking gets (the search does not depend on the selection judges), best first."""
    plain = search(problem(task), method="random", budget=BUDGET, seed=0, selection=selection())
    rows = plain.extra["selection"]["candidates"]
    assert len(rows) == 4 and (0, 0, 0, 0) not in [tuple(r["candidate"]) for r in rows]
    return [tuple(r["candidate"]) for r in rows]


def judged(judges: dict[str, FakeJudge], task: str = "improve"):
    p = problem(task)
    result = search(p, method="random", budget=BUDGET, seed=0, selection=selection(tuple(judges)),
                    select_judges=judges)
    return p, result, result.extra["selection"]


def test_the_answer_is_the_first_candidate_every_judge_prefers_and_vetoes_are_named():
    c0, c1, c2, c3 = top_four()
    # Judge A (the first) orders c2, c1, c0, c3, all better than the user prompt (0.5); judge B vetoes c2 and c3.
    a = FakeJudge({c2: 0.1, c1: 0.2, c0: 0.3, c3: 0.4})
    b = FakeJudge({c2: 0.6, c1: 0.4, c0: 0.45, c3: 0.5})
    _, result, record = judged({"clip:world:judge": a, "clip:world:judge_b": b})
    order = [tuple(r["candidate"]) for r in record["candidates"]]
    assert order == [c1, c2, c0, c3]  # the answer first, then the first judge's order
    assert result.best.candidate == c1 and not record["kept_user"]
    rows = {tuple(r["candidate"]): r for r in record["candidates"]}
    assert rows[c2]["vetoed_by"] == ["clip:world:judge_b"] and rows[c3]["vetoed_by"] == ["clip:world:judge_b"]
    assert rows[c1]["vetoed_by"] == [] and rows[c0]["vetoed_by"] == []
    assert rows[c1]["select_losses"] == pytest.approx({"clip:world:judge": 0.2, "clip:world:judge_b": 0.4})
    assert record["user_select_losses"] == pytest.approx({"clip:world:judge": 0.5, "clip:world:judge_b": 0.5})
    assert record["select_judges"] == ["clip:world:judge", "clip:world:judge_b"]
    assert record["vetoes"] == {"clip:world:judge": 0, "clip:world:judge_b": 2} and record["compared"] == 4
    assert record["select_calls"] == 5 * 2 * 2 == a.scored + b.scored  # (4 candidates + user) x 2 seeds x 2 judges


def test_a_tie_with_the_user_prompt_is_a_veto_and_attack_wants_higher_losses():
    c0, c1, c2, c3 = top_four("attack")
    a = FakeJudge({c0: 0.5, c1: 0.7, c2: 0.4, c3: 0.6})  # attack: higher is better; c0 ties the user prompt
    _, result, record = judged({"clip:world:judge_b": a}, "attack")
    assert [tuple(r["candidate"]) for r in record["candidates"]] == [c1, c3, c0, c2]
    assert result.best.candidate == c1
    assert [r["vetoed_by"] for r in record["candidates"]][2:] == [["clip:world:judge_b"]] * 2


def test_when_every_candidate_is_vetoed_the_user_prompt_is_the_answer():
    top = top_four()
    a = FakeJudge(dict.fromkeys(top, 0.2))
    b = FakeJudge(dict.fromkeys(top, 0.9))  # prefers none of them
    p, result, record = judged({"clip:world:judge": a, "clip:world:judge_b": b})
    assert record["kept_user"] and all(r["vetoed_by"] == ["clip:world:judge_b"] for r in record["candidates"])
    user = tuple(p.space.default)
    assert result.best.candidate == user and result.best.prompt == p.space.prompt
    # Not searched: its evaluation is made of the losses the re-ranking computed for it (nothing generated again).
    assert result.best.losses == pytest.approx(record["user_validation_losses"])
    assert result.best.source.startswith("user-baseline") and user not in [e.candidate for e in result.evaluations]
    assert len(p.generated) == 1


def test_charged_cost_is_the_candidates_generations_and_the_user_baseline_is_only_recorded():
    top = top_four()
    plain = search(problem(), method="random", budget=BUDGET, seed=0, selection=selection())
    p, result, record = judged({"clip:world:judge_b": FakeJudge(dict.fromkeys(top, 0.1))})
    assert record["cost"] == 4 * len(VALIDATION) and record["baseline_generations"] == len(VALIDATION)
    assert result.cost == pytest.approx(plain.cost) and result.cost <= BUDGET + 1e-9
    # One generation call: the 4 candidates and the user prompt on the validation seeds.
    assert p.generated == [([*top, tuple(p.space.default)], VALIDATION)]
    # The search judge's losses of the rows are those of the plain re-ranking.
    plain_rows = {tuple(r["candidate"]): r["mean_loss"] for r in plain.extra["selection"]["candidates"]}
    assert {tuple(r["candidate"]): r["mean_loss"] for r in record["candidates"]} == pytest.approx(plain_rows)


def test_the_user_prompt_among_the_candidates_is_generated_once_and_never_the_answer():
    p = ImageProblem(synthetic_space(2, 2), seed=1, noise=0.0)  # 4 candidates: enumerated, the user prompt too
    user = tuple(p.space.default)
    sel = SelectionConfig(rerank_top=4, validation_seeds=VALIDATION, max_share=0.5, judges=("clip:world:judge_b",))
    result = search(p, method="random", budget=40, seed=0, selection=sel,
                    select_judges={"clip:world:judge_b": FakeJudge({}, default=0.5)})  # everything ties
    record = result.extra["selection"]
    assert user in [tuple(r["candidate"]) for r in record["candidates"]]
    assert record["kept_user"] and record["baseline_generations"] == 0
    assert record["compared"] == 3 and record["vetoes"] == {"clip:world:judge_b": 3}  # not a veto of itself
    assert len(p.generated[-1][0]) == 4  # the user prompt's images are its candidate row's
    assert result.best.candidate == user and result.best.source != "user-baseline (validation seeds)"


def test_without_selection_judges_the_record_and_answer_are_as_before():
    """SyntheticProblem.losses raises: the re-ranking without selection judges does not call it, and its record
    has exactly the fields it had."""
    result = search(SyntheticProblem(synthetic_space(4, 3), seed=3, noise=0.0), method="random", budget=BUDGET,
                    seed=0, selection=selection())
    record = result.extra["selection"]
    assert set(record) == {"validation_seeds", "cost", "candidates"}
    assert all(set(r) == {"candidate", "search_losses", "validation_losses", "mean_loss", "objective"}
               for r in record["candidates"])
    assert result.best.candidate == tuple(record["candidates"][0]["candidate"])
    assert "select_judges" not in result.timings


def test_empty_judges_keep_saved_configs_and_fingerprints_byte_identical():
    """Values computed before selection judges existed: an empty list must not change a key or a config file."""
    import hashlib

    from dpo_diff.bench.config import BenchConfig
    from dpo_diff.optimize import OptimizeConfig

    plain = BenchConfig(model="CompVis/stable-diffusion-v1-4", device="cpu")
    assert (plain.key(), plain.method_key("random")) == ("f59430ace2a7cdec", "e7864f80040833b2")
    judged = BenchConfig(model="CompVis/stable-diffusion-v1-4", device="cpu", eval_judges=(
        "clip:openai/clip-vit-large-patch14",), seeds=(0, 1), budget=20)
    assert judged.key() == "a1b6b7f59c95cc99"
    cfg = OptimizeConfig(prompt="a red car", model="m").to_dict()
    assert "judges" not in cfg["selection"]
    assert hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16] == "462f798f609cd66a"
    # With selection judges: saved, read back, and a key of their own.
    sel = BenchConfig(model="CompVis/stable-diffusion-v1-4", device="cpu",
                      selection=SelectionConfig(4, judges=("clip:world:judge_b",)))
    assert sel.key() != plain.key()
    assert BenchConfig.from_dict(sel.to_dict()).selection.judges == ("clip:world:judge_b",)
    saved = OptimizeConfig(prompt="a red car", model="m", selection={"rerank_top": 4, "judges": [" clip:x "]})
    assert saved.to_dict()["selection"]["judges"] == ["clip:x"]  # normalised as str(spec)
    assert OptimizeConfig.from_dict(saved.to_dict()).selection == saved.selection


@pytest.mark.parametrize("judges, message", [
    (("checker",), "the checker is the shapes world's ground truth, never a selection judge"),
    (("clip:a", "clip:a"), r"name \['clip:a'\] twice"),
    (("bogus:x",), "unknown judge kind 'bogus'"),
    (("clip",), "needs a source"),
])
def test_bad_selection_judges_are_refused(judges, message):
    with pytest.raises(ValueError, match=message):
        SelectionConfig(4, judges=judges)


def test_selection_judges_need_reranking_and_their_loaded_judges():
    with pytest.raises(ValueError, match=r"re-ranking is off \(rerank_top 0\).*--rerank-top N"):
        SelectionConfig(0, judges=("clip:world:judge_b",))
    p, judge = problem(), FakeJudge({})
    with pytest.raises(ValueError, match=r"need their loaded judges.*missing \['clip:world:judge_b'\]"):
        search(p, budget=BUDGET, selection=selection(("clip:world:judge_b",)))
    with pytest.raises(ValueError, match="the selection names no judges"):
        search(p, budget=BUDGET, selection=selection(), select_judges={"clip:world:judge_b": judge})
    with pytest.raises(ValueError, match=r"not asked for \['clip:world:judge'\]"):
        search(p, budget=BUDGET, selection=selection(("clip:world:judge_b",)),
               select_judges={"clip:world:judge_b": judge, "clip:world:judge": judge})


def test_a_budget_too_small_to_rerank_says_the_selection_judges_did_not_run():
    p = problem()
    result = search(p, method="random", budget=8, seed=0, selection=SelectionConfig(4, judges=("clip:world:judge",)),
                    select_judges={"clip:world:judge": FakeJudge({})})
    assert "the selection judges (clip:world:judge) did not run" in result.extra["selection"]["skipped"]
    assert p.generated == []
