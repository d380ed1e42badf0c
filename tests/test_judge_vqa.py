"""The VQA judge (VQAScore, -log P("Yes")) on tiny random LLaVA and Qwen2-VL models built from configs, saved and
loaded through from_pretrained: inputs equal the models' own processors, the loss is finite and differentiable in
the image, batched equals one at a time, checkpointing keeps the gradient, specs parse, and it runs from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dpo_diff.judges.spec import JudgeRegistry, parse_judge, parse_objective
from dpo_diff.judges.vqa import VqaJudge
from dpo_diff.testing_vlm import LLAVA_TEMPLATE, save_tiny_llava, save_tiny_qwen2vl

PROMPT = "a red dog on the grass"


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vlms")
    return {"llava": save_tiny_llava(root / "llava"), "qwen2vl": save_tiny_qwen2vl(root / "qwen2vl")}


@pytest.fixture(scope="module")
def judges(vlms) -> dict[str, VqaJudge]:
    return {k: VqaJudge.from_pretrained(v) for k, v in vlms.items()}


def _quantized(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Images that PIL and torch hold exactly: uint8 values / 255."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
    return u8.permute(0, 3, 1, 2).float() / 255, [Image.fromarray(x.numpy()) for x in u8]


def test_llava_inputs_equal_the_llava_processor(vlms, judges):
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor

    folder, judge = vlms["llava"], judges["llava"]
    proc = LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(folder),
                          tokenizer=AutoTokenizer.from_pretrained(folder), patch_size=8, chat_template=LLAVA_TEMPLATE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    for h, w, tol in ((32, 32, 1e-6), (40, 56, 0.06)):  # at the model's size exact; resized: PIL vs torch kernels
        x, pil = _quantized(2, h, w)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                      "text": judge.question.format(PROMPT)}]}]
        text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ref = proc(text=[text, text], images=pil, return_tensors="pt")
        ours = judge.model_inputs(x, PROMPT)
        assert torch.equal(ours["input_ids"], ref["input_ids"])
        assert (ours["input_ids"] == judge.image_token_id).sum() == 2 * 16  # (32 / 8)^2 patches, CLS dropped
        assert ours["pixel_values"].shape == ref["pixel_values"].shape
        assert (ours["pixel_values"] - ref["pixel_values"]).abs().mean() < tol


def test_qwen2vl_patches_equal_its_image_processor(vlms, judges):
    from transformers import AutoImageProcessor

    ip, judge = AutoImageProcessor.from_pretrained(vlms["qwen2vl"]), judges["qwen2vl"]
    for h, w, tol in ((24, 32, 1e-6), (40, 52, 0.06)):  # 24x32 is a smart_resize fixed point; 40x52 -> 24x32
        x, pil = _quantized(2, h, w)
        ref = ip(pil, return_tensors="pt")
        pixels, extra = judge.pixels(x)
        assert torch.equal(extra["image_grid_thw"], ref["image_grid_thw"])
        assert pixels.shape == ref["pixel_values"].shape
        assert (pixels - ref["pixel_values"]).abs().mean() < tol
        ids = judge.model_inputs(x, PROMPT)["input_ids"]
        # Qwen2VLProcessor expands <|image_pad|> to grid_t * grid_h * grid_w / merge_size^2 tokens
        assert (ids[0] == judge.image_token_id).sum() == int(ref["image_grid_thw"][0].prod()) // 4


@pytest.mark.parametrize("family", ["llava", "qwen2vl"])
def test_loss_is_finite_differentiable_and_batched_equals_one_at_a_time(family, judges):
    judge = judges[family]
    x = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = judge.loss(x, PROMPT)
    assert loss.shape == (3,) and torch.isfinite(loss).all() and (loss > 0).all()  # -log of a probability
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.flatten(1).abs().sum(1) > 0).all()  # every image gets one
    one = torch.cat([judge.loss(x[i:i + 1].detach(), PROMPT) for i in range(3)])
    torch.testing.assert_close(one, loss.detach(), atol=1e-5, rtol=1e-5)
    texts = [PROMPT, "a big happy cat", PROMPT]
    mixed = judge.loss(x.detach(), texts)
    torch.testing.assert_close(mixed, torch.cat([judge.loss(x[i:i + 1].detach(), t) for i, t in enumerate(texts)]),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[1], loss[1].detach())  # the question changes the score


def test_the_loss_is_minus_log_softmax_of_the_yes_token(judges):
    judge = judges["llava"]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids, yes = judge.prompt_ids(PROMPT)
    assert judge.tokenizer.convert_ids_to_tokens(yes) == "Yes"
    with torch.no_grad():
        logits = judge.model(**judge.model_inputs(x, PROMPT)).logits[:, -1]
    torch.testing.assert_close(judge.loss(x, PROMPT), -torch.log_softmax(logits, -1)[:, yes])


def test_checkpointing_gives_the_same_gradient_and_refuses_dropout(vlms, tmp_path):
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    grads = []
    for ckpt in (False, True):
        judge = VqaJudge.from_pretrained(vlms["llava"], checkpointing=ckpt)
        xi = x.clone().requires_grad_(True)
        judge.loss(xi, PROMPT).sum().backward()
        grads.append(xi.grad)
    assert judge.model.training and judge.model.model.language_model.gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"without dropout .*attention_dropout=0.1"):
        VqaJudge.from_pretrained(save_tiny_llava(tmp_path / "drop", dropout=0.1), checkpointing=True)


def test_models_it_cannot_question_are_refused_with_the_reason(vlms, tmp_path):
    with pytest.raises(ValueError, match="has no chat template.*PaliGemma and InstructBLIP"):
        VqaJudge.from_pretrained(save_tiny_llava(tmp_path / "plain", chat_template=None))
    no_image = LLAVA_TEMPLATE.replace("<image>\n", "")
    with pytest.raises(ValueError, match=r"put 0 image tokens .* not 1"):
        VqaJudge.from_pretrained(save_tiny_llava(tmp_path / "noimg", chat_template=no_image))
    j = VqaJudge.from_pretrained(vlms["llava"])
    with pytest.raises(ValueError, match=r"answer 'Yes please' is not one token"):
        VqaJudge(j.model, j.tokenizer, j.pixels.p, j.chat_template, answer="Yes please")


def test_the_spec_parses_and_the_registry_loads_it(vlms):
    spec = parse_judge(f"vqa:{vlms['llava']}[checkpointing=1;dtype=bf16]")
    assert spec.kind == "vqa" and spec.option_dict == {"checkpointing": "1", "dtype": "bf16"}
    with pytest.raises(ValueError, match="dtype='fp8' is not one of fp32, bf16, fp16"):
        parse_judge(f"vqa:{vlms['llava']}[dtype=fp8]")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['clip'\] for vqa judges; allowed: checkpointing, "
                                         r"dtype"):
        parse_judge(f"vqa:{vlms['llava']}[clip=x]")
    with pytest.raises(ValueError, match="needs a source: vqa:HUB_ID_OR_FOLDER"):
        parse_judge("vqa")
    objective = parse_objective(f"vqa:{vlms['qwen2vl']}=1,vqa:{vlms['llava']}<=+0.5")
    assert [t.judge.kind for t in objective.terms] == ["vqa", "vqa"] and objective.constraints
    judge = JudgeRegistry("cpu").load(f"vqa:{vlms['llava']}")
    assert isinstance(judge, VqaJudge) and judge.name == f"vqa:{vlms['llava']}"
    assert np.isfinite(judge.loss(torch.rand(1, 3, 32, 32), PROMPT).item())


def test_vqa_drives_optimize_and_evaluates_from_the_cli(vlms, tiny_sd, space_file, tmp_path):
    from dpo_diff.cli import main

    out = tmp_path / "run"
    assert main(["optimize", "--prompt", "a red dog on the grass", "--space", space_file, "--model", tiny_sd,
                 "--steps", "4", "--budget", "4", "--gpo-iterations", "1", "--seeds", "0", "--report-seeds", "5",
                 "--out", str(out), "--quiet", "--device", "cpu", "--rerank-top", "0", "--method", "gpo",
                 "--gpo-preset", "paper",  # one GPO step whatever the budget: the shortcut gradient goes through it
                 "--objective", f"vqa:{vlms['llava']}", "--eval-judges", f"vqa:{vlms['qwen2vl']}"]) == 0
    result = json.loads((out / "result.json").read_text())
    roles = {name.split(":")[0] + ":" + name.rsplit("/", 1)[-1]: v["role"] for name, v in result["judges"].items()}
    assert roles == {"vqa:llava": "objective", "vqa:qwen2vl": "eval"}
    losses = [v for j in result["judges"].values() for who in ("user", "best")
              for v in j[who]["report_losses"].values()]
    assert len(losses) == 4 and all(np.isfinite(v) and v > 0 for v in losses)
    extra = json.loads((out / "search.json").read_text())["extra"]
    assert len(extra["gpo_log"]) == 1 and np.isfinite(extra["gpo_log"][0]["loss"])
    start = [1.0] + [0.0] * (len(extra["logits"][0]) - 1)  # GPO's initial logits: the user's word
    assert all(not np.allclose(row, start) for row in extra["logits"])  # the VQA gradient moved every slot


def test_judge_flag_points_a_vqa_spec_to_objective(vlms):
    from dpo_diff.judges.clip import ClipJudge

    with pytest.raises(ValueError, match=r"--judge takes a CLIP model id or folder, not the vqa judge .* use "
                                         r"--objective"):
        ClipJudge.from_pretrained(f"vqa:{vlms['llava']}")


@pytest.mark.parametrize("family", ["llava", "qwen2vl"])
def test_scoring_builds_no_kv_cache(family, judges):
    """One forward per score, never a generation: a KV cache would cost ~0.65 GB per image for a 7B model."""
    seen = []
    hook = judges[family].model.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((kwargs.get("use_cache"), getattr(out, "past_key_values", None))),
        with_kwargs=True)
    try:
        judges[family].loss(torch.rand(2, 3, 32, 32), PROMPT)
    finally:
        hook.remove()
    assert seen == [(False, None)]


def test_the_registry_loads_vqa_judges_in_bf16_on_cuda_and_fp32_elsewhere(vlms, monkeypatch):
    from types import SimpleNamespace

    loaded = []

    def fake(cls, source, *, device, dtype, checkpointing):
        loaded.append((str(device), dtype))
        return SimpleNamespace()

    monkeypatch.setattr(VqaJudge, "from_pretrained", classmethod(fake))
    for device in ("cuda", "cuda:1", "cpu"):
        JudgeRegistry(device).load(f"vqa:{vlms['llava']}")
    JudgeRegistry("cuda").load(f"vqa:{vlms['llava']}[dtype=fp32]")
    assert loaded == [("cuda", torch.bfloat16), ("cuda:1", torch.bfloat16), ("cpu", torch.float32),
                      ("cuda", torch.float32)]
