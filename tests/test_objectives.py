"""Judges as plugins (CLIP, SigLIP, aesthetic predictor) and objectives (weighted sums, normalisation, constraints),
on tiny random models saved and loaded through ``from_pretrained`` (or the weights file), offline."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dpo_diff.judges.objective import INFEASIBLE, Objective
from dpo_diff.judges.spec import JudgeRegistry, parse_judge, parse_judges, parse_objective


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> str:
    from dpo_diff.testing import save_tiny_siglip

    return str(save_tiny_siglip(tmp_path_factory.mktemp("models") / "siglip"))


@pytest.fixture(scope="module")
def aesthetic_file(tmp_path_factory) -> str:
    from dpo_diff.testing import save_aesthetic_weights

    return str(save_aesthetic_weights(tmp_path_factory.mktemp("models") / "aesthetic.pth", input_size=16))


@pytest.fixture(scope="module")
def registry() -> JudgeRegistry:
    return JudgeRegistry("cpu")


# ---------------------------------------------------------------------------------------------------- specs
def test_objective_spec_parses_weights_options_and_constraints():
    spec = parse_objective("clip:openai/clip-vit-large-patch14=1, aesthetic:w.pth[clip=some/clip]=0.2,"
                           "siglip:google/siglip-base-patch16-224<=+0.02")
    assert [t.weight for t in spec.terms] == [1.0, 0.2, 0.0]
    assert spec.terms[1].judge.option_dict == {"clip": "some/clip"}
    assert spec.terms[2].is_constraint and spec.terms[2].margin == pytest.approx(0.02)
    assert [t.judge.kind for t in spec.weighted] == ["clip", "aesthetic"]
    assert parse_objective(str(spec)) == spec  # the saved form reads back the same
    precise = parse_objective("clip:x=0.123456789,clip:y<=+0.0123456789")
    assert parse_objective(str(precise)) == precise
    assert parse_objective("clip:x").terms[0].weight == 1.0
    assert parse_judges("checker,clip:world:judge_b") == (parse_judge("checker"), parse_judge("clip:world:judge_b"))


@pytest.mark.parametrize("bad, message", [
    ("vit:foo=1", "unknown judge kind 'vit'"),
    ("clip=1", "needs a source"),
    ("clip:x=0", "non-zero"),
    ("clip:x<=-0.1", "margin must be >= 0"),
    ("clip:x<=abc", "must be a number"),
    ("clip:x<=+0.1", "only constraints"),
    ("checker=1", "eval-judges"),
    ("clip:x[bogus=1]=1", "unknown option"),
])
def test_bad_objective_specs_say_what_is_allowed(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_objective(bad)


def test_judge_sources_are_checked_without_loading(tmp_path, tiny_clip):
    from dpo_diff.judges.spec import check_judge_sources
    from dpo_diff.loading import ModelNotFoundError

    empty, weights = tmp_path / "empty", tmp_path / "w.pth"
    empty.mkdir()
    weights.write_bytes(b"")  # only its existence is checked: the weights are read when the judge loads
    check_judge_sources([f"clip:{tiny_clip}", "world:judge", "world:vqa", "checker",
                         f"aesthetic:{weights}[clip={tiny_clip}]", f"aesthetic:{weights}[clip=world:judge_b]"])
    for bad, message in [(f"clip:{empty}", f"CLIP judge folder {str(empty)!r} has no config.json"),
                         (f"vqa:{empty}", "VQA judge folder"), (f"siglip:{tmp_path}/no", "does not exist"),
                         (f"aesthetic:{tmp_path}/no.pth", "weights file"), (f"aesthetic:{empty}", "is a folder"),
                         (f"aesthetic:{weights}[clip={empty}]", "CLIP backbone folder"),
                         ("clip:world:nothing", "the shapes world has no model 'nothing'")]:
        with pytest.raises(ModelNotFoundError, match=re.escape(message)) as e:
            check_judge_sources(["world:judge", bad], "evaluation judge")
        assert str(e.value).startswith(f"evaluation judge {bad!r}: ")


# ---------------------------------------------------------------------------------------------------- preprocessing
def _uint8_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_preprocessing_equals_the_models_own_processor(kind, tiny_clip, tiny_siglip, registry):
    from transformers import AutoImageProcessor

    folder = tiny_clip if kind == "clip" else tiny_siglip
    judge = registry.load(f"{kind}:{folder}")
    proc = AutoImageProcessor.from_pretrained(folder)
    same = _uint8_images(2, 32, 32)  # already at the judge's size: only rescale and normalise
    want = torch.as_tensor(np.asarray(proc(images=list(same), return_tensors="np")["pixel_values"]))
    torch.testing.assert_close(judge.preprocess(_as_tensor(same)), want.float(), atol=1e-5, rtol=0)
    # a smooth larger image (downscaled inside the differentiable path): PIL's and torch's antialiased resizes agree
    yy, xx = np.meshgrid(np.linspace(0, 1, 96), np.linspace(0, 1, 96), indexing="ij")
    smooth = (np.stack([xx, yy, (xx + yy) / 2], -1)[None] * 255).round().astype(np.uint8)
    want = torch.as_tensor(np.asarray(proc(images=list(smooth), return_tensors="np")["pixel_values"])).float()
    got = judge.preprocess(_as_tensor(smooth))
    assert got.shape == want.shape
    assert (got - want).abs().mean() < 0.02 and (got - want).abs().max() < 0.1


def test_judges_run_at_their_own_resolution(registry, tiny_siglip):
    judge = registry.load(f"siglip:{tiny_siglip}")
    assert judge.preprocess(torch.rand(1, 3, 16, 24)).shape == (1, 3, 32, 32)  # whole image, no crop


# ---------------------------------------------------------------------------------------------------- gradients
@pytest.fixture(scope="module")
def world_space():
    from dpo_diff.space import space_from_substitutes

    return space_from_substitutes("a red circle", {}, {"red": ["blue", "green"], "circle": ["square", "star"]}
                                  ).select("negative")


@pytest.mark.parametrize("which", ["clip", "siglip", "aesthetic", "all"])
def test_the_shortcut_gradient_reaches_the_slot_logits_through_each_judge(which, backend, tiny_clip, tiny_siglip,
                                                                           aesthetic_file, registry, world_space):
    from dpo_diff.problem import Problem, SamplingConfig, Task
    from dpo_diff.relax import WordMixture

    terms = {"clip": f"clip:{tiny_clip}=1", "siglip": f"siglip:{tiny_siglip}=1",
             "aesthetic": f"aesthetic:{aesthetic_file}[clip={tiny_clip}]=1"}
    spec = ",".join(terms.values()) if which == "all" else terms[which]
    objective = Objective.from_spec(spec, registry)
    problem = Problem(world_space, Task("improve"), backend, objective, SamplingConfig(steps=4, guidance_scale=7.5))
    from dpo_diff.judges.objective import calibrate_objective

    calibrate_objective(problem, [0, 1], [0])
    mixture = WordMixture(world_space.sizes)
    logits = mixture.logits  # the slot logits GPO learns (a Parameter)
    weights = mixture.sample_weights(1.0, torch.Generator().manual_seed(0))
    loss = problem.relaxation()(weights, (0,), start_step=1, grad_steps=1)
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradient(tiny_clip):
    from dpo_diff.judges.clip import ClipJudge

    img = torch.rand(2, 3, 40, 40)
    grads = []
    for ckpt in (False, True):
        judge = ClipJudge.from_pretrained(tiny_clip, checkpointing=ckpt)
        x = img.clone().requires_grad_(True)
        judge.loss(x, "a red circle").sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_judges_on_one_backbone_share_one_image_forward(tiny_clip, aesthetic_file):
    reg = JudgeRegistry()
    objective = Objective.from_spec(f"clip:{tiny_clip}=1,aesthetic:{aesthetic_file}[clip={tiny_clip}]=0.5", reg)
    clip = objective.judges[0]
    assert objective.judges[1].clip is clip  # the aesthetic predictor reuses the loaded CLIP term
    calls = []
    clip.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    values = objective.term_losses(torch.rand(3, 3, 16, 16), "a red circle")
    assert values.shape == (3, 2) and len(calls) == 1


def test_aesthetic_predictor_file_is_checked(tmp_path, tiny_clip, registry):
    from dpo_diff.judges.aesthetic import AestheticJudge
    from dpo_diff.testing import save_aesthetic_weights

    wrong = save_aesthetic_weights(tmp_path / "l14.pth", input_size=768)
    with pytest.raises(ValueError, match="768-d embeddings"):
        AestheticJudge.from_file(wrong, registry.load(f"clip:{tiny_clip}"))
    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="unexpected key 'fc.weight'"):
        AestheticJudge.from_file(tmp_path / "odd.pth", registry.load(f"clip:{tiny_clip}"))


def test_aesthetic_loss_is_minus_the_linear_mlp_rating(tmp_path, tiny_clip, aesthetic_file, registry):
    judge = registry.load(f"aesthetic:{aesthetic_file}[clip={tiny_clip}]")
    state = torch.load(aesthetic_file, weights_only=True)
    img = torch.rand(2, 3, 32, 32)
    x = judge.clip.image_features(img)
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].t() + state[f"layers.{i}.bias"]
    torch.testing.assert_close(judge.loss(img, "ignored"), -x.squeeze(-1))


# ---------------------------------------------------------------------------------------------------- objectives
class Fixed:
    """A judge whose loss is a fixed function of the image: ``scale * mean pixel`` (per image)."""

    def __init__(self, scale: float) -> None:
        self.scale, self.name = scale, f"fixed{scale}"

    backbone = property(lambda self: self)

    def features(self, images):
        return images.mean(dim=(1, 2, 3))

    def loss_from_features(self, f, texts):
        return self.scale * f

    def loss(self, images, texts):
        return self.loss_from_features(self.features(images), texts)


def _objective(text: str, scales: list[float], sign: float = 1.0) -> Objective:
    return Objective(parse_objective(text), [Fixed(s) for s in scales], sign=sign)


def _grey(*levels: float) -> torch.Tensor:
    return torch.stack([torch.full((3, 4, 4), v) for v in levels])


def test_normalisation_is_the_relative_change_against_the_user_prompt_on_the_same_seed():
    obj = _objective("clip:a=1,clip:b=0.5", [1.0, -10.0])  # the second judge's loss is negative, 10x larger
    user = obj.term_losses(_grey(0.4, 0.6), "p")  # seeds 7 and 8
    cal = obj.calibrated(user, [7, 8], search_seeds=[7])
    assert cal.calibration.center.tolist() == pytest.approx([0.4, -4.0])
    assert cal.calibration.scale.tolist() == pytest.approx([0.4, 4.0])  # |user mean on the search seeds|
    # the user prompt scores 0 on every seed; a 10% rise of every term scores 0.1 * (1 + 0.5) on seed 7
    torch.testing.assert_close(cal.rows(user.view(1, 2, 2), [7, 8]), torch.zeros(1, 2))
    worse = obj.term_losses(_grey(0.44, 0.6), "p").view(1, 2, 2)
    got = cal.rows(worse, [7, 8])
    assert got[0, 0].item() == pytest.approx(0.1 * 1 + (-0.1) * 0.5, abs=1e-5)  # term b fell by 10% (its loss < 0)
    assert got[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    # the differentiable loss uses the search-seed mean as reference: same value on the search seed
    assert cal.loss(_grey(0.44), "p").item() == pytest.approx(got[0, 0].item(), abs=1e-5)
    with pytest.raises(ValueError, match="not on \\[9\\]"):
        cal.rows(worse[:, :1], [9])
    assert "user_per_seed" in cal.to_dict()["calibration"]


def test_weights_scale_their_terms_and_uncalibrated_objectives_are_raw_sums():
    obj = _objective("clip:a=2,clip:b=0.5", [1.0, 3.0])
    img = _grey(0.5)
    assert obj.loss(img, "p").item() == pytest.approx(2 * 0.5 + 0.5 * 1.5)
    assert obj.rows(obj.term_losses(img, "p").view(1, 1, 2), [0]).item() == pytest.approx(1.75)


def test_a_term_whose_user_value_is_zero_keeps_scale_one():
    obj = _objective("clip:a=1", [1.0])
    cal = obj.calibrated(obj.term_losses(_grey(0.0), "p"), [0], [0])
    assert cal.calibration.scale.tolist() == [1.0]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_infeasible_candidates_rank_below_every_feasible_one(sign):
    # term 0 is optimized, term 1 must stay within +0.05 of the user prompt's (seed means)
    obj = _objective("clip:a=1,clip:b<=+0.05", [1.0, 1.0], sign=sign)
    cal = obj.calibrated(obj.term_losses(_grey(0.5, 0.5), "p"), [0, 1], [0])
    cands = torch.tensor([
        [[0.2, 0.50], [0.2, 0.50]],  # feasible, much better on term 0 for improve
        [[0.1, 0.60], [0.1, 0.60]],  # best on term 0 but term 1 rose 0.1 > 0.05: infeasible
        [[0.1, 0.56], [0.1, 0.56]],  # infeasible by less
        [[0.6, 0.54], [0.6, 0.56]],  # mean rise 0.05: feasible (boundary), worse for improve
    ])
    j = cal.rows(cands, [0, 1])
    objective = sign * j.mean(1)  # what every search minimises
    feasible = cal.feasible(cands, [0, 1])
    assert feasible.tolist() == [True, False, False, True]
    assert objective[feasible].max() < objective[~feasible].min()
    assert objective[2] < objective[1]  # less violation ranks higher
    assert (sign * j[1]).min() > INFEASIBLE - 1
    # the user prompt is feasible on any seeds by construction
    assert cal.feasible(torch.full((1, 2, 2), 0.5), [0, 1]).item()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_differentiable_constraint_is_a_hinge_that_pushes_back_in_the_tasks_direction(sign):
    obj = _objective("clip:a=1,clip:b<=+0.1", [1.0, 2.0], sign=sign)
    cal = obj.calibrated(obj.term_losses(_grey(0.5), "p"), [0], [0])  # term b: user 1.0, bound 1.1
    inside = _grey(0.52).requires_grad_(True)  # b = 1.04: no penalty
    outside = _grey(0.6).requires_grad_(True)  # b = 1.2: hinge 0.1 / scale 1.0, times penalty 10
    li, lo = cal.loss(inside, "p"), cal.loss(outside, "p")
    assert li.item() == pytest.approx(0.02 / 0.5, abs=1e-5)
    assert lo.item() == pytest.approx(0.1 / 0.5 + sign * 10 * 0.1, abs=1e-4)
    (sign * lo).sum().backward()  # what GPO descends: the penalty always pushes towards feasibility
    assert outside.grad.sum() > 0


def test_constraints_need_a_calibrated_objective():
    obj = _objective("clip:a=1,clip:b<=+0.1", [1.0, 1.0])
    with pytest.raises(ValueError, match="calibrated"):
        obj.loss(_grey(0.5), "p")


# ---------------------------------------------------------------------------------------------------- the shapes world
def test_the_checker_is_an_evaluation_judge_and_the_second_world_judge_loads(registry):
    from dpo_diff.world.prompts import scene_for_prompt
    from dpo_diff.world.render import render_batch

    prompt = "a big red circle in the center"
    image = _as_tensor(render_batch([scene_for_prompt(prompt, np.random.default_rng(0))]))
    checker = registry.load("checker")
    assert checker.loss(image, prompt).tolist() == [0.0]
    assert checker.loss(image, "a big blue square in the center").tolist() == [1.0]
    first, second = registry.load("clip:world:judge"), registry.load("clip:world:judge_b")
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.world import judge_path

    assert ClipJudge.from_pretrained(str(judge_path())).name == "clip:world:judge"  # no install path in records
    assert second.model.config.vision_config.patch_size != first.model.config.vision_config.patch_size
    assert second.loss(image, prompt) < second.loss(image, "a big blue square in the center")
    with pytest.raises(ValueError, match="has no model 'judge_z'"):
        registry.load("clip:world:judge_z")


def test_gradient_checkpointing_keeps_less_for_backward(tmp_path):
    from dpo_diff.judges.clip import ClipJudge
    from dpo_diff.shortcut import SavedTensorBytes
    from dpo_diff.testing import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "clip64", image_size=64)
    saved = []
    for ckpt in (False, True):
        judge = ClipJudge.from_pretrained(str(folder), checkpointing=ckpt)
        x = torch.rand(2, 3, 64, 64, requires_grad=True)
        with SavedTensorBytes() as s:
            loss = judge.loss(x, "a red circle").sum()
        loss.backward()
        saved.append(s.bytes)
    assert saved[1] < saved[0] / 2
