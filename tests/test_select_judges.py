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

    # The defaults of then, named: the paper's antonym space (keyed as no --space kind) and random search.
    plain = BenchConfig(model="CompVis/stable-diffusion-v1-4", device="cpu", space_kind="antonym")
    assert (plain.key(), plain.method_key("random")) == ("f59430ace2a7cdec", "e7864f80040833b2")
    judged = BenchConfig(model="CompVis/stable-diffusion-v1-4", device="cpu", eval_judges=(
        "clip:openai/clip-vit-large-patch14",), seeds=(0, 1), budget=20, space_kind="antonym")
    assert judged.key() == "a1b6b7f59c95cc99"
    cfg = OptimizeConfig(prompt="a red car", model="m", method="random").to_dict()
    assert "judges" not in cfg["selection"]
    assert hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16] == "462f798f609cd66a"
    # With selection judges: saved, read back, and a key of their own.
    sel = BenchConfig(model="CompVis/stable-diffusion-v1-4", device="cpu", space_kind="antonym",
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


def test_the_flag_reaches_optimize_and_bench_configs(tmp_path):
    import argparse

    from dpo_diff.commands import bench, optimize
    from dpo_diff.commands.search_args import search_settings

    parser = argparse.ArgumentParser()
    optimize.add_arguments(parser)
    args = parser.parse_args(["--prompt", "a green orb", "--out", "x", "--select-judge", "clip:world:judge_b",
                              "--select-judge", " world:judge , clip:openai/clip-vit-large-patch14"])
    assert search_settings(args)["selection"].judges == ("clip:world:judge_b", "clip:world:judge",
                                                         "clip:openai/clip-vit-large-patch14")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    cfg = bench.config_from_args(parser.parse_args(["--prompts", "p.txt", "--world", "--out", str(tmp_path / "b"),
                                                    "--select-judge", "clip:world:judge_b"]))
    assert cfg.selection.judges == ("clip:world:judge_b",) and cfg.to_dict()["selection"]["judges"] == [
        "clip:world:judge_b"]


def test_optimize_on_the_shapes_world_records_the_selection_judges_verdict(tmp_path, capsys):
    from dpo_diff.cli import main

    out = tmp_path / "orb"
    # budget 10 and one validation seed: 2 candidates re-ranked (at most 20% of the budget)
    assert main(["optimize", "--prompt", "a green orb", "--out", str(out), "--steps", "4", "--budget", "10",
                 "--report-seeds", "5", "--rerank-top", "2", "--validation-seeds", "1", "--select-judge",
                 "clip:world:judge_b", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    record = result["selection"]
    assert record["select_judges"] == ["clip:world:judge_b"] and record["validation_seeds"] == [1]
    assert len(record["candidates"]) == 2 and all("clip:world:judge_b" in r["select_losses"]
                                                  for r in record["candidates"])
    assert record["select_calls"] == (2 + record["baseline_generations"]) * 1
    assert result["cost"] <= 10 + 1e-9 and record["cost"] == 2
    assert "selection judges clip:world:judge_b:" in printed
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["selection"]["judges"] == ["clip:world:judge_b"]
    user = (result["best"]["prompt"], result["best"]["negative_prompt"]) == (result["user_prompt"], "")
    assert user == record["kept_user"]  # the selection judge's verdict decides, not the search judge
    if record["kept_user"]:
        assert "clip:world:judge_b vetoed" in result["note"]


def test_in_optimize_the_search_judge_cannot_overrule_the_selection_judges(tmp_path):
    """Attack (higher losses win). Where the search judge finds every candidate better than the user prompt but the
    selection judge prefers none, the user prompt is kept; where the search judge finds every candidate worse but the
    selection judge prefers them all, the re-ranked winner is the answer."""
    from dpo_diff.optimize import OptimizeConfig, run_search
    from dpo_diff.space import space_from_substitutes

    space = space_from_substitutes("w0 w1", {"w0": ["a", "b"], "w1": ["c", "d"]}, None)
    cfg = OptimizeConfig(prompt="w0 w1", space="unused", model="m", task="attack", budget=20, report_seeds=(9,),
                         selection=SelectionConfig(4, validation_seeds=(5,), max_share=0.5,
                                                   judges=("clip:world:judge_b",)))
    for search_gain, select_loss, kept in ((0.1, 0.0, True), (-0.1, 9.0, False)):
        costs = torch.tensor([[0.0, search_gain, 2 * search_gain]] * 2)
        p = ImageProblem(space, "attack", costs, noise=0.0)
        judge = FakeJudge({tuple(p.space.default): 1.0}, default=select_loss)
        out = tmp_path / f"run{select_loss}"
        out.mkdir()
        found = run_search(cfg, p, space, out, resume=False, progress=False,
                           select_judges={"clip:world:judge_b": judge})
        record = found.search.extra["selection"]
        assert record["kept_user"] == kept and (found.best_candidate == tuple(p.space.default)) == kept
        assert ("clip:world:judge_b vetoed 4 of 4" in found.note) == kept


def test_a_missing_selection_judge_fails_as_any_missing_judge_before_the_search():
    from dpo_diff.loading import ModelNotFoundError
    from dpo_diff.optimize import OptimizeConfig, load_select_judges

    cfg = OptimizeConfig(prompt="a red car", model="m", selection=SelectionConfig(4, judges=("clip:no/such-judge",)))
    with pytest.raises(ModelNotFoundError, match="CLIP judge 'no/such-judge' is not a local folder"):
        load_select_judges(cfg)
    assert load_select_judges(OptimizeConfig(prompt="a red car", model="m")) == {}


def selection_record(kept: bool, vetoes: dict[str, int]) -> dict:
    return {"validation_seeds": [1], "cost": 2.0, "candidates": [{"candidate": [1], "vetoed_by": []}] * 2,
            "select_judges": list(vetoes), "compared": 2, "vetoes": vetoes, "kept_user": kept, "select_calls": 6,
            "baseline_generations": 1}


def test_bench_records_carry_the_verdict_and_the_report_counts_vetoes(tmp_path):
    from dpo_diff.bench.config import BenchConfig
    from dpo_diff.bench.jobs import Job, make_record
    from dpo_diff.bench.report import write_report
    from test_report import write_folder

    cfg = BenchConfig(world=True, seeds=(0,), report_seeds=(5,), device="cpu",
                      selection=SelectionConfig(4, judges=("clip:world:judge_b",)))
    losses = {"search_losses": {"0": 0.5}, "report_losses": {"5": 0.4}}
    result = {"best": {"prompt": "p", "negative_prompt": ""}, "before": losses, "after": losses, "cost": 4.0,
              "evaluated": 3, "note": "", "slots": 1, "space_size": 2}
    job = Job("p", "random", {}, "k")
    assert "selection" not in make_record(cfg, job, result, [], 1.0, {})  # no selection judges: as before
    verdict = selection_record(True, {"clip:world:judge_b": 2})
    assert make_record(cfg, job, {**result, "selection": verdict}, [], 1.0, {})["selection"] == verdict

    out = write_folder(tmp_path / "b", {"user": [1.0, 0.8, 0.9], "random": [0.9, 0.8, 0.7]})
    plain = write_report(out)["markdown"].read_text()
    assert "Selection judges" not in plain
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    judged = iter([selection_record(True, {"clip:a": 2, "clip:b": 1}), selection_record(False, {"clip:a": 1,
                                                                                                 "clip:b": 0})])
    for r in records:
        if r["method"] == "random" and r["prompt"] != "prompt 2":  # the third run was not judged
            r["selection"] = next(judged)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths = write_report(out)
    md = paths["markdown"].read_text()
    assert ("| method | judged runs | user kept | vetoes: clip:a | vetoes: clip:b | judge scorings / run | "
            "baseline gen. / run |") in md
    assert "| random | 2/3 | 1 | 3/4 | 1/4 | 6 | 1 |" in md
    assert 'id="selection-judges"' in paths["html"].read_text()


def test_the_web_app_takes_selection_judges_it_already_has_and_shows_the_verdict(tmp_path):
    from dpo_diff.optimize import selection_line
    from dpo_diff.ui import folders
    from dpo_diff.ui.jobs import Models, RunRequest, make_config
    from dpo_diff.world.spaces import world_space

    space, world = world_space("a green orb", "improve"), Models(None, None, "cpu")
    cfg, _ = make_config(RunRequest("a green orb", select_judges="clip:world:judge_b, clip:world:judge"), world,
                         tmp_path / "run", space)
    assert cfg.selection.judges == ("clip:world:judge_b", "clip:world:judge") and cfg.selection.rerank_top == 4
    assert make_config(RunRequest("a green orb"), world, tmp_path / "run", space)[0].selection.judges == ()
    for text, message in (("checker", "never a selection judge"), ("clip:/etc", "takes only judges it already has"),
                          ("aesthetic:world:judge[clip=/x]", "takes only judges it already has")):
        with pytest.raises(ValueError, match=message):
            make_config(RunRequest("a green orb", select_judges=text), world, tmp_path / "run", space)
    own = Models("some/model", "my/clip", "cpu")  # the judge given on the app's command line is trusted too
    assert make_config(RunRequest("a green orb", select_judges="clip:my/clip"), own, tmp_path / "run",
                       space)[0].selection.judges == ("clip:my/clip",)
    verdict = selection_record(True, {"clip:world:judge_b": 2})
    result = {"user_prompt": "a green orb", "task": "improve", "method": "random", "cost": 4, "budget": 4,
              "evaluated": 2, "best": {"prompt": "a green orb", "negative_prompt": ""}, "before": {}, "after": {},
              "selection": verdict}
    text = folders.result_markdown(result)
    assert selection_line(verdict) in text and "user prompt kept" in text and "clip:world:judge_b 2" in text


def test_a_cancelled_search_says_the_selection_judges_did_not_run():
    p = problem()
    result = search(p, method="random", budget=BUDGET, seed=0, selection=selection(("clip:world:judge_b",)),
                    select_judges={"clip:world:judge_b": FakeJudge({})}, should_stop=lambda: True)
    assert result.extra["cancelled"] and p.generated == []
    assert result.extra["selection"]["skipped"] == ("the search was cancelled; the selection judges "
                                                    "(clip:world:judge_b) did not run: the search judge alone chose")


def test_optimize_generates_each_validation_image_once_and_the_record_says_what_was_generated(tmp_path,
                                                                                               monkeypatch):
    """The re-ranking generates the user prompt's validation images for the agreement rule; optimize's own
    keep-or-replace comparison must not generate them a second time (the selection judges' verdict decides)."""
    from collections import Counter

    from dpo_diff.cli import main
    from dpo_diff.problem import Problem

    rows: Counter = Counter()
    generate = Problem._generate

    def counted(self, chunk, steps=None):
        rows.update((pair.prompt, pair.negative_prompt, seed) for pair, seed in chunk)
        return generate(self, chunk, steps)

    monkeypatch.setattr(Problem, "_generate", counted)
    out = tmp_path / "orb"
    assert main(["optimize", "--prompt", "a green orb", "--out", str(out), "--steps", "4", "--budget", "10",
                 "--report-seeds", "5", "--rerank-top", "2", "--validation-seeds", "1", "--select-judge",
                 "clip:world:judge_b", "--seed", "1", "--quiet", "--device", "cpu"]) == 0
    record = json.loads((out / "result.json").read_text())["selection"]
    validation = {row: n for row, n in rows.items() if row[2] == 1}
    assert rows[("a green orb", "", 1)] == 1  # the user prompt on the validation seed
    assert all(n == 1 for n in validation.values()), validation
    # Honest cost: the candidates' charged generations plus the uncharged baseline are all that was generated there.
    assert sum(validation.values()) == record["cost"] + record["baseline_generations"]
