"""Train every shipped model of the shapes world: VAE, checker, judge CLIP, generator (UNet + text encoder), and the
VQA judge (a tiny LLaVA asked VQAScore's question; trained apart from the checker, on rendered scenes with caption
negatives: one attribute changed, two objects' attributes swapped, the relation flipped).

Seeded and resumable: each stage checkpoints under ``--work`` every few minutes and resumes from its last
checkpoint; the data of step ``k`` is drawn from ``numpy.random.default_rng([seed, stage, k])`` so a resumed run
sees the same batches as an uninterrupted one. Finished stages are exported into the package data folder
(``src/dpo_diff/data/shapes_world``) in safetensors (fp16 storage, fp32 configs: they load as float32).

    python scripts/train_world.py                       # the first four stages, CPU: ~100 min on 2 free cores
    python scripts/train_world.py --stages vqa          # the VQA judge (vqa:world:vqa)
    python scripts/train_world.py --device cuda --bf16  # same on a GPU, minutes
    python scripts/train_world.py --stages generator --gen-steps 4000 --gen-anneal-steps 700  # extend a stage
    python scripts/train_world.py --export-only         # re-export all models from their checkpoints

Each stage stops at its step count or its ``--*-minutes`` wall-clock cap, whichever comes first. On a CPU shared
with other jobs use ``--threads 1``: two OpenMP threads on one free core ran ~5x slower per step.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dpo_diff.world.checker_model import CheckerNet, scene_targets
from dpo_diff.world.paths import checker_path, generator_path, judge_path, world_data_dir
from dpo_diff.world.prompts import sample_training_example
from dpo_diff.world.render import render_batch
from dpo_diff.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, make_object, sample_scene

STAGE_IDS = {"vae": 1, "checker": 2, "judge": 3, "generator": 4, "vqa": 5}
TOKENIZER_SRC = Path(__file__).resolve().parent.parent / "src" / "dpo_diff" / "data" / "clip_tokenizer"
GEN_TEXT_LEN = 77  # like real SD: the pipeline pads prompts to 77 tokens
JUDGE_TEXT_LEN = 32
JUDGE_MEAN = [0.5, 0.5, 0.5]
JUDGE_STD = [0.5, 0.5, 0.5]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, STAGE_IDS[stage], step])


def to_tensor(images: np.ndarray, device: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and brightness jitter so the checker and judge also read imperfect (generated) images."""
    n = x.shape[0]
    dev = x.device
    sigma = torch.rand(n, generator=gen, device="cpu").to(dev) * 1.0 + 1e-3
    k = torch.arange(-2, 3, device=dev, dtype=x.dtype)
    w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # (n, 5)
    xb = x.reshape(1, n * 3, 32, 32)
    wk = w.repeat_interleave(3, 0)
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), wk[:, None, None, :], groups=n * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), wk[:, None, :, None], groups=n * 3)
    x = xb.reshape(n, 3, 32, 32)
    scale = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen).to(dev) - 0.5) * 0.2
    noise_std = torch.rand(n, 1, 1, 1, generator=gen).to(dev) * 0.08
    x = (x + 1) * scale - 1 + torch.randn(x.shape, generator=gen).to(dev) * noise_std
    return x.clamp(-1, 1)


class Ckpt:
    """Checkpoint of one stage: a dict of state_dicts + step, saved atomically."""

    def __init__(self, work: Path, stage: str) -> None:
        self.path = work / stage / "last.pt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_save = time.time()

    def load(self) -> dict | None:
        if self.path.exists():
            return torch.load(self.path, map_location="cpu", weights_only=False)
        return None

    def save(self, state: dict, force: bool = False, every_s: float = 120.0) -> None:
        if not force and time.time() - self.last_save < every_s:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)
        self.last_save = time.time()


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup)


def save_fp16(folder: Path) -> None:
    """Rewrite every safetensors file in ``folder`` in fp16 (configs stay float32, so they load as float32)."""
    for f in folder.rglob("*.safetensors"):
        sd = load_file(f)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f, metadata={"format": "pt"})


def copy_tokenizer(dest: Path, max_len: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        shutil.copy(TOKENIZER_SRC / name, dest / name)
    cfg = json.loads((TOKENIZER_SRC / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = max_len
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def load_tokenizer(max_len: int):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_SRC), model_max_length=max_len)
    assert len(tok) == 49408, f"CLIP tokenizer has {len(tok)} tokens, expected 49408"
    return tok


class TokenCache:
    """Tokenising with the Python BPE is slow-ish; the world has few distinct captions, so cache them."""

    def __init__(self, tok, max_len: int) -> None:
        self.tok, self.max_len, self.cache = tok, max_len, {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            enc = self.tok(missing, padding="max_length", max_length=self.max_len, truncation=True)
            for t, ids, m in zip(missing, enc["input_ids"], enc["attention_mask"], strict=True):
                self.cache[t] = (ids, m)
        ids = torch.tensor([self.cache[t][0] for t in texts])
        mask = torch.tensor([self.cache[t][1] for t in texts])
        return ids, mask


def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                ema[k].copy_(v)


def autocast(device: str, enabled: bool):
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=enabled)


# ---------------------------------------------------------------------------------------------------------------
# VAE


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=16, sample_size=32, mid_block_add_attention=False,
    )


def train_vae(args) -> None:
    device = args.device
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ck = Ckpt(args.work, "vae")
    state, step = ck.load(), 0
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"vae: resumed at step {step}")
    start = time.time()
    while step < args.vae_steps and (time.time() - start) < args.vae_minutes * 60:
        rng = step_rng(args.seed, "vae", step)
        scenes = [sample_scene(rng) for _ in range(args.vae_batch)]
        x = to_tensor(render_batch(scenes), device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, 1e-3, 50)
        with autocast(device, args.bf16):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=torch.Generator(device).manual_seed(args.seed * 1000 + step))
            rec = vae.decode(z).sample
        rec = rec.float()
        kl = post.kl().mean() / (16 * 16 * 4)
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"vae step {step} loss {loss.item():.4f} mse {F.mse_loss(rec, x).item():.5f} kl {kl.item():.3f}")
        ck.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})
    ck.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, force=True)
    log(f"vae: done at step {step}")


def load_trained_vae(args):
    vae = build_vae()
    vae.load_state_dict(Ckpt(args.work, "vae").load()["model"])
    vae.eval().requires_grad_(False)
    # Scaling factor: 1 / std of latent means on fresh scenes, so latents enter the UNet at unit variance.
    rng = np.random.default_rng([args.seed, 99])
    with torch.no_grad():
        x = to_tensor(render_batch([sample_scene(rng) for _ in range(512)]), "cpu")
        z = vae.encode(x).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae.to(args.device)


# ---------------------------------------------------------------------------------------------------------------
# Checker


def train_checker(args) -> None:
    device = args.device
    net = CheckerNet().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    ck = Ckpt(args.work, "checker")
    state, step = ck.load(), 0
    if state:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    start = time.time()
    while step < args.checker_steps and (time.time() - start) < args.checker_minutes * 60:
        rng = step_rng(args.seed, "checker", step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        scenes = [sample_scene(rng) for _ in range(args.batch)]
        x = augment(to_tensor(render_batch(scenes), device), gen)
        tgt = {k: v.to(device) for k, v in scene_targets(scenes).items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step, 2e-3, 100) * 0.5 * (1 + math.cos(math.pi * step / args.checker_steps))
        out = net(x)
        loss = sum(F.cross_entropy(out[k], tgt[k], ignore_index=-100) for k in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"checker step {step} loss {loss.item():.4f}")
        ck.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step})
    ck.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step}, force=True)
    export_checker(args)
    log(f"checker: done at step {step}, exported")


def export_checker(args) -> None:
    state = Ckpt(args.work, "checker").load()
    out_dir = checker_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().half().contiguous() for k, v in state["model"].items()},
              out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps({"architecture": "CheckerNet", "width": 32, "steps": state["step"],
                                                     "seed": args.seed}, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Judge CLIP


def perturb(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with one attribute changed: a hard negative for contrastive training."""
    for _ in range(20):
        objs = list(scene.objects)
        bg = scene.background
        i = int(rng.integers(len(objs)))
        o = objs[i]
        pair = len(objs) == 2
        what = int(rng.integers(5))
        c, s, z, p = o.colour, o.shape, o.size, o.position
        if what == 0:
            c = str(rng.choice([x for x in COLOURS if x != c]))
        elif what == 1:
            s = str(rng.choice([x for x in SHAPES if x != s]))
        elif what == 2:
            z = [x for x in SIZES if x != z][0]
        elif what == 3 and not pair:
            p = str(rng.choice([x for x in POSITIONS if x != p]))
        elif what == 3 and pair:
            a, b = objs
            objs = [make_object(b.colour, b.shape, b.size, "left", True, rng),
                    make_object(a.colour, a.shape, a.size, "right", True, rng)]
        else:
            bg = str(rng.choice([x for x in BACKGROUNDS if x != bg]))
        if what != 3 or not pair:
            objs[i] = make_object(c, s, z, p, pair, rng)
        try:
            new = Scene(tuple(objs), bg)
        except ValueError:
            continue
        if new != scene:
            return new
    return sample_scene(rng)


# Judge architectures: "vit4" is the shipped judge; "vit8s" is a smaller, independently trained second judge (patch 8,
# narrower towers, its own seed) used to evaluate searches optimized on the first one (cross-judge evaluation).
JUDGE_ARCHS = {
    "vit4": dict(text=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4),
                 vision=dict(patch_size=4, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                             num_attention_heads=4),
                 projection_dim=64),
    "vit8s": dict(text=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4),
                  vision=dict(patch_size=8, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                              num_attention_heads=4),
                  projection_dim=32),
}


def build_judge(args):
    from transformers import CLIPConfig, CLIPModel

    arch = JUDGE_ARCHS[args.judge_arch]
    proj = arch["projection_dim"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=JUDGE_TEXT_LEN, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407, projection_dim=proj, **arch["text"]),
        vision_config=dict(image_size=32, num_channels=3, projection_dim=proj, **arch["vision"]),
        projection_dim=proj,
    )
    torch.manual_seed(args.seed + 7)  # the judge's own initialisation seed (the generator uses args.seed)
    return CLIPModel(cfg)


def judge_out(args) -> Path:
    """The exported judge's folder: the shipped judge, or ``--judge-out NAME`` under the world's data folder."""
    return judge_path() if args.judge_out == "judge" else world_data_dir() / args.judge_out


def judge_rounding(rng: np.random.Generator, n: int, most: float) -> list[float] | None:
    """Corner rounding per image (:func:`dpo_diff.world.render.render`): none for the shipped judges (``most`` 0,
    nothing drawn, so their batches stay as they were); else 0 for a third of the images and a share of the object's
    radius up to ``most`` for the rest, so the judge reads rounded squares and blunt triangles, the generator's
    shapes, as the shapes they are (0.35 at most: beyond it a small triangle turns into a disc)."""
    if most <= 0:
        return None
    share = rng.uniform(0.0, most, n)
    return [float(v) if keep else 0.0 for v, keep in zip(share, rng.random(n) >= 1 / 3)]


def train_judge(args) -> None:
    device = args.device
    model = build_judge(args).to(device)
    tok = TokenCache(load_tokenizer(JUDGE_TEXT_LEN), JUDGE_TEXT_LEN)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ck = Ckpt(args.work, args.judge_out)
    state, step = ck.load(), 0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"judge: resumed at step {step}")
    from dpo_diff.world.captions import caption

    start = time.time()
    half = args.judge_batch // 2
    while step < args.judge_steps and (time.time() - start) < args.judge_minutes * 60:
        rng = step_rng(args.seed, "judge", step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pairs = [sample_training_example(rng, "judge") for _ in range(half)]
        scenes = [s for s, _ in pairs]
        texts = [t for _, t in pairs]
        # Half the batch: one-attribute perturbations of the other half, so the judge must read every attribute.
        from dpo_diff.world.prompts import is_heldout_caption

        for s in list(scenes):
            ps = perturb(s, rng)
            for _ in range(8):
                t = caption(ps, rng, "uniform")
                if not is_heldout_caption(t):
                    break
            scenes.append(ps)
            texts.append(t)
        x = augment(to_tensor(render_batch(scenes, judge_rounding(rng, len(scenes), args.judge_rounding)), device),
                    gen)
        ids, mask = tok(texts)
        # Same caption twice in a batch would be a false negative: mask duplicate texts out of the loss.
        same = torch.tensor([[a == b for b in texts] for a in texts], device=device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, 1e-3, 200) * 0.5 * (1 + math.cos(math.pi * step / args.judge_steps))
        with autocast(device, args.bf16):
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), pixel_values=x)
        logits = out.logits_per_image.float()
        eye = torch.eye(len(texts), dtype=torch.bool, device=device)
        logits = logits.masked_fill(same & ~eye, -1e4)
        labels = torch.arange(len(texts), device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % 50 == 0:
            acc = (logits.argmax(1) == labels).float().mean().item()
            log(f"judge step {step} loss {loss.item():.4f} acc {acc:.3f} scale {model.logit_scale.exp().item():.1f}")
        ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
    ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, force=True)
    export_judge(args)
    log(f"judge: done at step {step}, exported")


def save_image_processor(out: Path) -> None:
    """The judges' ``preprocessor_config.json``: 32 px images, mean = std = 0.5 (the [-1, 1] range they train on)."""
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 32}, do_center_crop=True, crop_size={"height": 32, "width": 32},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=JUDGE_MEAN, image_std=JUDGE_STD,
        do_convert_rgb=True,
    ).save_pretrained(out)


def export_judge(args) -> None:
    state = Ckpt(args.work, args.judge_out).load()
    model = build_judge(args)
    model.load_state_dict(state["model"])
    step = state["step"]
    out = judge_out(args)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    save_fp16(out)
    copy_tokenizer(out, JUDGE_TEXT_LEN)
    save_image_processor(out)
    record = {"steps": step, "seed": args.seed}
    if args.judge_arch != "vit4":  # the shipped judge's record stays as it was
        record.update(arch=args.judge_arch, batch=args.judge_batch)
    if args.judge_rounding > 0:
        record.update(rounding=args.judge_rounding)
    (out / "training_state.json").write_text(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# VQA judge: a tiny LLaVA (CLIP vision tower, projector, Llama language model) asked VQAScore's question


VQA_ARCH = dict(vision=dict(image_size=32, patch_size=4, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                            num_attention_heads=4),
                text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, max_position_embeddings=256))
VQA_SPECIALS = ("[PAD]", "[UNK]", "<image>")
# LLaVA-1.5's conversation layout; the question is the VQA judge's own (dpo_diff.judges.vqa.QUESTION)
VQA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in message['content'] %}{{ c['text'] }}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
VQA_PAIR_SHARE = 0.6  # scenes with two objects (binding and relations are what a bag-of-words judge misses)


def build_vqa_tokenizer():
    """A word-level tokenizer over the world's words, the question and the template (lower-cased; unknown words
    read as [UNK]): the world's captions need no sub-words, and it keeps the model small."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dpo_diff.judges.vqa import ANSWER, QUESTION
    from dpo_diff.world.captions import VOCABULARY

    words = set(VOCABULARY) | set("user assistant no".split()) | set(QUESTION.lower().replace("{}", " ").split())
    words |= {ANSWER.lower(), ":"}
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    pieces = {p for w in words for p, _ in split.pre_tokenize_str(w)}
    vocab = {w: i for i, w in enumerate([*VQA_SPECIALS, *sorted(pieces)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = split
    tk.add_special_tokens(list(VQA_SPECIALS))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    tok.chat_template = VQA_CHAT_TEMPLATE
    return tok


def build_vqa(args, tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VQA_ARCH["vision"]),
                      text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=None,
                                              eos_token_id=None, **VQA_ARCH["text"]),
                      image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(args.seed + 11)  # the VQA judge's own initialisation seed
    return LlavaForConditionalGeneration(cfg)


class VqaBatcher:
    """Question token rows for captions (the image token expanded to the vision tower's patches), left-padded so
    the answer position is the last one, with positions counted from each row's first real token (as the judge
    scores one unpadded row). ``labels`` mark the caption's tokens of true captions: the captioning loss."""

    def __init__(self, tok, n_image_tokens: int) -> None:
        from dpo_diff.judges.vqa import ANSWER, QUESTION

        self.tok, self.n, self.cache = tok, n_image_tokens, {}
        self.image = tok.convert_tokens_to_ids("<image>")
        self.yes, self.no = (tok.convert_tokens_to_ids(w) for w in (ANSWER.lower(), "no"))
        self.question = QUESTION

    def row(self, text: str) -> list[int]:
        return self.row_and_caption(text)[0]

    def row_and_caption(self, text: str) -> tuple[list[int], int, int]:
        """The row and where the caption's tokens are in it (``[start, end)``)."""
        if text not in self.cache:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.question.format(text)}]}]
            prompt = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tok(prompt, add_special_tokens=False).input_ids
            at = ids.index(self.image)
            row = ids[:at] + [self.image] * self.n + ids[at + 1:]
            cap = self.tok(text, add_special_tokens=False).input_ids
            start = next(i for i in range(len(row) - len(cap), -1, -1) if row[i:i + len(cap)] == cap)
            self.cache[text] = row, start, start + len(cap)
        return self.cache[text]

    def __call__(self, texts: list[str], device: str, captions: list[bool] | None = None) -> dict[str, torch.Tensor]:
        rows = [self.row_and_caption(t) for t in texts]
        width = max(len(r) for r, _, _ in rows)
        pads = [width - len(r) for r, _, _ in rows]
        ids = torch.tensor([[self.tok.pad_token_id] * p + r for p, (r, _, _) in zip(pads, rows)], device=device)
        mask = (torch.arange(width, device=device)[None] >= torch.tensor(pads, device=device)[:, None]).long()
        out = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
        if captions is not None:
            labels = torch.full_like(ids, -100)
            for i, (p, (_, a, b)) in enumerate(zip(pads, rows)):
                if captions[i]:
                    labels[i, p + a:p + b] = ids[i, p + a:p + b]
            out["labels"] = labels
        return out


def vqa_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The judge's own augmentation: a shift of up to one pixel, then blur, noise and brightness jitter."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")[..., 1 + dy:33 + dy, 1 + dx:33 + dx]
    return augment(x, gen)


def vqa_examples(rng: np.random.Generator, n: int) -> tuple[list[Scene], list[str], list[bool]]:
    """``n`` scenes, each with one true caption and one false caption (:mod:`dpo_diff.world.negatives`)."""
    from dpo_diff.world.captions import caption
    from dpo_diff.world.negatives import negative_caption
    from dpo_diff.world.prompts import is_heldout_caption

    scenes, texts, yes = [], [], []
    while len(scenes) < 2 * n:
        scene = sample_scene(rng, p_pair=VQA_PAIR_SHARE)
        text = caption(scene, rng, "uniform")
        if is_heldout_caption(text):
            continue
        scenes += [scene, scene]
        texts += [text, negative_caption(scene, rng)[0]]
        yes += [True, False]
    return scenes, texts, yes


def train_vqa(args) -> None:
    device = args.device
    tok = build_vqa_tokenizer()
    model = build_vqa(args, tok).to(device)
    batcher = VqaBatcher(tok, (32 // VQA_ARCH["vision"]["patch_size"]) ** 2)
    opt = torch.optim.AdamW(model.parameters(), lr=args.vqa_lr, weight_decay=0.0)
    ck = Ckpt(args.work, "vqa")
    state, step = ck.load(), 0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"vqa: resumed at step {step}")
    start = time.time()
    while step < args.vqa_steps and (time.time() - start) < args.vqa_minutes * 60:
        rng = step_rng(args.seed, "vqa", step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        scenes, texts, yes = vqa_examples(rng, args.vqa_batch // 2)
        x = vqa_augment(to_tensor(render_batch(scenes), device), gen)
        target = torch.tensor([batcher.yes if y else batcher.no for y in yes], device=device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vqa_lr, 200) * 0.5 * (1 + math.cos(math.pi * step / args.vqa_steps))
        inputs = batcher(texts, device, captions=yes)
        labels = inputs.pop("labels")
        with autocast(device, args.bf16):
            out = model(**inputs, pixel_values=x, use_cache=False)
        every = out.logits.float()
        logits = every[:, -1]
        loss = F.cross_entropy(logits, target)  # the full vocabulary, as VQAScore reads P("Yes")
        # Captioning (BLIP trains matching with language modelling alike): each token of a true caption predicted
        # from the image and the words before it. Many bits per image where the answer gives one: it teaches the
        # language model to read the image much sooner than the yes/no answer alone did (0.58 at 800 steps).
        loss = loss + args.vqa_caption_weight * F.cross_entropy(every[:, :-1].transpose(1, 2), labels[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            p_yes = logits.softmax(-1)[:, batcher.yes]
            acc = ((p_yes > 0.5) == torch.tensor(yes, device=device)).float().mean().item()
            log(f"vqa step {step} loss {loss.item():.4f} acc {acc:.3f} ({(time.time() - start) / 60:.1f} min)")
        ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step})
    ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, force=True)
    export_vqa(args)
    log(f"vqa: done at step {step}, exported")


def export_vqa(args) -> None:
    from dpo_diff.world.paths import vqa_path

    state = Ckpt(args.work, "vqa").load()
    tok = build_vqa_tokenizer()
    model = build_vqa(args, tok)
    model.load_state_dict(state["model"])
    out = vqa_path()
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    save_fp16(out)
    tok.save_pretrained(out)
    save_image_processor(out)
    (out / "training_state.json").write_text(json.dumps({"steps": state["step"], "seed": args.seed,
                                                         "batch": args.vqa_batch,
                                                         "caption_weight": args.vqa_caption_weight}) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Generator


def build_generator(args):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(args.seed)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=GEN_TEXT_LEN, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=64,
    ))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        # Text cross-attention at 8x8 and in the middle only: attention at 16x16 cost ~30% of a CPU step.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=4,
        norm_num_groups=32,
    )
    return text, unet


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def gen_total_steps(args) -> int:
    return args.gen_steps + args.gen_restart_steps


def gen_lr_at(step: int, args) -> float:
    """Warm-up, constant, then a cosine cool-down over the last ``--gen-anneal-steps`` steps of ``--gen-steps``;
    then, for ``--gen-restart-steps`` more steps, one more cosine cycle from ``--gen-restart-lr`` (a warm restart:
    the shipped generator's shapes were fixed by it, see the model card)."""
    if step >= args.gen_steps:
        t = (step - args.gen_steps) / max(1, args.gen_restart_steps)
        return args.gen_restart_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    lr = lr_at(step, args.gen_lr, 200)
    start = args.gen_steps - args.gen_anneal_steps
    if args.gen_anneal_steps > 0 and step >= start:
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / args.gen_anneal_steps)))
    return lr


def train_generator(args) -> None:
    from diffusers import DDPMScheduler

    device = args.device
    vae = load_trained_vae(args)
    sf = vae.config.scaling_factor
    text, unet = build_generator(args)
    text.to(device)
    unet.to(device)
    params = list(text.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.gen_lr, weight_decay=0.0)
    ema_t = {k: v.detach().clone() for k, v in text.state_dict().items()}
    ema_u = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    sched = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k not in ("set_alpha_to_one",)})
    ck = Ckpt(args.work, "generator")
    state, step = ck.load(), 0
    if state:
        text.load_state_dict(state["text"])
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        ema_t, ema_u, step = state["ema_text"], state["ema_unet"], state["step"]
        log(f"generator: resumed at step {step}")
    tok = TokenCache(load_tokenizer(GEN_TEXT_LEN), GEN_TEXT_LEN)
    acp = sched.alphas_cumprod.to(device)

    def snapshot() -> dict:
        return {"text": text.state_dict(), "unet": unet.state_dict(), "opt": opt.state_dict(), "ema_text": ema_t,
                "ema_unet": ema_u, "step": step, "scaling_factor": sf}

    start = time.time()
    while step < gen_total_steps(args) and (time.time() - start) < args.generator_minutes * 60:
        rng = step_rng(args.seed, "generator", step)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pairs = [sample_training_example(rng, "generator") for _ in range(args.batch)]
        # ~10% empty captions: the unconditional branch classifier-free guidance (and negative prompts) need.
        texts = [t if rng.random() >= 0.1 else "" for _, t in pairs]
        x = to_tensor(render_batch([s for s, _ in pairs]), device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean * sf
        noise = torch.randn(z.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (z.shape[0],), generator=gen).to(device)
        a = acp[t].sqrt()[:, None, None, None]
        b = (1 - acp[t]).sqrt()[:, None, None, None]
        noisy = a * z + b * noise
        target = a * noise - b * z  # v-prediction
        ids, _ = tok(texts)
        for g in opt.param_groups:
            g["lr"] = gen_lr_at(step, args)
        with autocast(device, args.bf16):
            h = text(input_ids=ids.to(device)).last_hidden_state
            pred = unet(noisy, t, encoder_hidden_states=h).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        ema_update(ema_t, text, decay)
        ema_update(ema_u, unet, decay)
        step += 1
        if step % 50 == 0:
            el = time.time() - start
            log(f"generator step {step} loss {loss.item():.4f} ({el / 60:.1f} min this run)")
        ck.save(snapshot())
        if args.export_every and step % args.export_every == 0:
            ck.save(snapshot(), force=True)
            export_generator(args)
    ck.save(snapshot(), force=True)
    export_generator(args)
    log(f"generator: done at step {step}, exported")


def export_generator(args) -> None:
    """Assemble the StableDiffusionPipeline folder from the generator checkpoint's EMA weights and the VAE."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    state = Ckpt(args.work, "generator").load()
    vae = load_trained_vae(args).cpu()
    text, unet = build_generator(args)
    text.load_state_dict(state["ema_text"])
    unet.load_state_dict(state["ema_unet"])
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text.eval(), tokenizer=load_tokenizer(GEN_TEXT_LEN), unet=unet.eval(),
        scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    out = generator_path()
    tmp = out.with_name("generator.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    save_fp16(tmp)
    # The slow-tokenizer files suffice (len == 49408 checked on load); tokenizer.json would add 3.5 MB.
    (tmp / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    copy_tokenizer(tmp / "tokenizer", GEN_TEXT_LEN)
    (tmp / "training_state.json").write_text(json.dumps({"steps": state["step"], "seed": args.seed}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"generator exported (step {state['step']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="vae,checker,judge,generator")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("checkpoints/world"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (helps on GPUs; slower on the CPU we measured)")
    p.add_argument("--vae-batch", type=int, default=16, help="flat scenes need few samples per step; full-res "
                   "convolutions make big VAE batches slow on CPU")
    p.add_argument("--vae-steps", type=int, default=580)
    p.add_argument("--vae-minutes", type=float, default=15)
    p.add_argument("--checker-steps", type=int, default=600)
    p.add_argument("--checker-minutes", type=float, default=15)
    p.add_argument("--judge-steps", type=int, default=3000)
    p.add_argument("--judge-batch", type=int, default=128)
    p.add_argument("--judge-minutes", type=float, default=60)
    p.add_argument("--judge-rounding", type=float, default=0.0, metavar="SHARE",
                   help="round the training scenes' corners by up to SHARE of each object's radius (two images in "
                        "three), as the generator draws shapes; 0: plain renderings (the shipped judge and judge_b)")
    p.add_argument("--judge-arch", default="vit4", choices=sorted(JUDGE_ARCHS),
                   help="judge architecture (vit4: the shipped judge; vit8s: the smaller second judge)")
    p.add_argument("--judge-out", default="judge", help="folder name of the exported judge under the world's data "
                   "folder (and of its checkpoints under --work); the second judge: judge_b")
    p.add_argument("--vqa-steps", type=int, default=1600)
    p.add_argument("--vqa-batch", type=int, default=96, help="examples per step: half true captions, half false")
    p.add_argument("--vqa-lr", type=float, default=1e-3)
    p.add_argument("--vqa-minutes", type=float, default=90)
    p.add_argument("--vqa-caption-weight", type=float, default=1.0, help="weight of the captioning loss on true "
                   "captions beside the yes/no answer's")
    p.add_argument("--gen-steps", type=int, default=3300)
    p.add_argument("--gen-lr", type=float, default=1e-3)
    p.add_argument("--gen-anneal-steps", type=int, default=600)
    p.add_argument("--gen-restart-steps", type=int, default=800, help="steps of a second cosine cycle after "
                   "--gen-steps (0: none)")
    p.add_argument("--gen-restart-lr", type=float, default=5e-4)
    p.add_argument("--generator-minutes", type=float, default=150)
    p.add_argument("--export-every", type=int, default=300)
    p.add_argument("--export-only", action="store_true", help="only re-export models from their checkpoints")
    args = p.parse_args(argv)
    if args.gen_restart_steps < 0 or not 0 <= args.gen_anneal_steps <= args.gen_steps:
        p.error(f"need --gen-restart-steps >= 0 (got {args.gen_restart_steps}) and 0 <= --gen-anneal-steps <= "
                f"--gen-steps (got {args.gen_anneal_steps} and {args.gen_steps})")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal floats slow CPU kernels several-fold
    world_data_dir().mkdir(parents=True, exist_ok=True)
    if args.export_only:
        # Re-export every model whose checkpoint exists (e.g. after an interrupted run, or to refresh formats).
        for stage, fn in (("checker", export_checker), ("judge", export_judge), ("generator", export_generator),
                          ("vqa", export_vqa)):
            if Ckpt(args.work, args.judge_out if stage == "judge" else stage).path.exists():
                fn(args)
                log(f"exported {stage}")
        return 0
    for stage in args.stages.split(","):
        t0 = time.time()
        {"vae": train_vae, "checker": train_checker, "judge": train_judge, "generator": train_generator,
         "vqa": train_vqa}[stage](args)
        log(f"stage {stage} took {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
