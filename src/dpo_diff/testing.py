"""Tiny random models for tests, examples and CPU smoke runs.

:func:`save_tiny_sd` writes a complete ``StableDiffusionPipeline`` folder (real CLIP BPE tokenizer, 2-layer text
encoder, small UNet and VAE), :func:`save_tiny_clip` a ``CLIPModel`` folder with a ``preprocessor_config.json``,
:func:`save_tiny_siglip` a ``SiglipModel`` folder (a tiny Unigram tokenizer built offline) and
:func:`save_aesthetic_weights` an aesthetic-predictor weights file.
Both are random (seeded) but load through exactly the same ``from_pretrained`` path as real models, so tests
exercise the code users run. A Stable Diffusion v1.x-shaped UNet can be built for benchmarks with
:func:`sd15_unet_config`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from dpo_diff.resources import clip_tokenizer_path


def _copy_tokenizer(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in clip_tokenizer_path().iterdir():
        shutil.copy(f, dst / f.name)


def save_tiny_sd(path: str | Path, *, prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
                 seed: int = 0, sample_size: int = 8, scheduler: str = "ddim") -> Path:
    """Save a tiny random Stable Diffusion pipeline folder (image size ``sample_size * 2`` px)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16), in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=4,
            sample_size=sample_size * 2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
            max_position_embeddings=77,
        ))
    sched_kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        prediction_type=prediction_type)
    if scheduler == "ddim":
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **sched_kwargs)
    else:
        sched = PNDMScheduler(skip_prk_steps=True, steps_offset=1, **sched_kwargs)
    _copy_tokenizer(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def save_tiny_clip(path: str | Path, *, seed: int = 1, image_size: int = 32) -> Path:
    """Save a tiny random ``CLIPModel`` folder with tokenizer and image-processor config (a judge for tests)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = Path(path)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(path)
    _copy_tokenizer(path)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(path)
    return path


TINY_VOCAB = ("a an the red green blue yellow purple orange white black gray circle square triangle diamond orb "
              "star big small large tiny huge left right center centre on in of and background photo cat dog car "
              "road snowy").split()


def tiny_unigram_tokenizer():
    """A small SentencePiece-style (Unigram, metaspace) fast tokenizer built offline with ``tokenizers``: whole
    words of :data:`TINY_VOCAB`, single letters for anything else, ``<pad>``/``</s>``/``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [(t, 0.0) for t in specials] + [("\u2581" + w, -1.0) for w in TINY_VOCAB]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz,.'-"] + [("\u2581", -6.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=16)


def save_tiny_siglip(path: str | Path, *, seed: int = 2, image_size: int = 32) -> Path:
    """Save a tiny random ``SiglipModel`` folder with a Unigram tokenizer and a ``SiglipImageProcessor`` config."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    path = Path(path)
    tok = tiny_unigram_tokenizer()
    config = SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=len(tok), max_position_embeddings=16, pad_token_id=0, eos_token_id=1,
                         bos_token_id=1, projection_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=image_size, patch_size=8),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SiglipModel(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def save_aesthetic_weights(path: str | Path, *, input_size: int = 16, seed: int = 3) -> Path:
    """Save a random predictor in the LAION aesthetic predictor's layout (``layers.0/2/4/6/7``; widths scaled down
    from 1024/128/64/16 to 32/16/8/4) as a ``torch.save``'d state dict."""
    import torch

    path = Path(path)
    sizes = [input_size, 32, 16, 8, 4, 1]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = {}
        for idx, (i, o) in zip((0, 2, 4, 6, 7), zip(sizes, sizes[1:])):
            layer = torch.nn.Linear(i, o)
            state[f"layers.{idx}.weight"], state[f"layers.{idx}.bias"] = layer.weight.data, layer.bias.data
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def random_backend(arch: str = "tiny", device: str = "cpu", dtype: str = "fp32"):
    """A backend with random weights: ``tiny`` (16 px, loaded from a saved folder) or ``sd15`` (Stable Diffusion
    v1.x shapes: 860 M UNet, 512 px, CLIP ViT-L text encoder), for benchmarks where costs, not values, matter."""
    import tempfile

    import torch

    from dpo_diff.backends.diffusers_sd import DTYPES, StableDiffusionBackend
    from dpo_diff.testing import save_tiny_sd

    if arch == "tiny":
        return StableDiffusionBackend.from_pretrained(save_tiny_sd(tempfile.mkdtemp()), device=device, dtype=dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dpo_diff.resources import clip_tokenizer_path

    with torch.device(device):
        unet = UNet2DConditionModel(**sd15_unet_config()).to(DTYPES[dtype])
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2).to(DTYPES[dtype])
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, vocab_size=49408, max_position_embeddings=77,
                                            hidden_act="quick_gelu", eos_token_id=49407, bos_token_id=49406,
                                            pad_token_id=49407)).to(DTYPES[dtype])
    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionBackend(tok, text, unet, vae, sched, device=device, dtype=DTYPES[dtype])


def sd15_unet_config() -> dict:
    """The UNet configuration of Stable Diffusion v1.x (for memory/throughput benchmarks with random weights)."""
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    )


class SyntheticProblem:
    """A problem whose loss is a *known* function of the candidate, for testing searches without a diffusion model.

    ``loss(candidate, seed) = base + sum_s costs[s][candidate[s]] + noise * n(seed)``. The relaxed loss used by GPO is
    the same expression with soft weights in place of one-hot choices, so its gradient is exact, unless
    ``relaxed_costs`` are given: then GPO follows a gradient that can point away from the optimum (a problem where
    GPO can fail, as the shortcut's one-step x0 can mislead on a real model). The optimum is the per-slot argmin
    (improve) or argmax (attack) of ``costs``.
    """

    def __init__(self, space, task: str = "improve", costs=None, *, seed: int = 0, base: float = 0.8,
                 noise: float = 0.01, steps: int = 50, constraint=None, relaxed_costs=None,
                 preview_noise: float = 0.05) -> None:
        import torch

        from dpo_diff.problem import SamplingConfig, Task
        from dpo_diff.seeding import torch_generator

        self.space, self.task, self.constraint = space, Task(task), constraint
        self.sampling = SamplingConfig(steps=steps)
        width = max(space.sizes)
        if costs is None:
            costs = torch.rand(len(space.slots), width, generator=torch_generator(seed, "costs")) * 0.1
        self.costs = torch.as_tensor(costs, dtype=torch.float32)
        for i, n in enumerate(space.sizes):
            self.costs[i, n:] = 0.0
        # What the relaxed loss (GPO's gradient) sees; differs from ``costs`` to model a misleading gradient.
        self.relaxed_costs = self.costs if relaxed_costs is None else torch.as_tensor(relaxed_costs).float()
        self.base, self.noise = base, noise
        self.calls = 0  # evaluations requested (candidate x seed rows, any fidelity)
        self.fidelity_calls: dict[str, int] = {}  # the same by fidelity name
        self.preview_noise = preview_noise
        self.compute_dtype = torch.float32

    @property
    def user_prompt(self) -> str:
        return self.space.prompt

    def render(self, candidate):
        return self.space.render(candidate)

    def _seed_noise(self, seeds):
        import torch

        return torch.tensor([self.noise * (((s * 7919) % 13) / 13 - 0.5) for s in seeds])

    def optimum(self):
        pick = (lambda row: row.argmin()) if self.task.name == "improve" else (lambda row: row.argmax())
        return tuple(int(pick(self.costs[i, :n])) for i, n in enumerate(self.space.sizes))

    def candidate_losses(self, candidates, seeds, fidelity="full"):
        """Exact losses; at a cheaper fidelity (:mod:`dpo_diff.fidelity`) the same plus a deterministic per-
        (candidate, fidelity) error of size ``preview_noise`` times the share of the sampler's calls it skips, so
        cheap looks rank candidates worse than full ones and a look at full steps is exact."""
        import torch

        from dpo_diff.fidelity import Fidelity
        from dpo_diff.seeding import derive_seed

        fid = Fidelity.parse(fidelity, self.sampling.steps).normalized(self.sampling.steps, len(seeds))
        seeds = fid.seed_subset(tuple(seeds))
        self.calls += len(candidates) * len(seeds)
        self.fidelity_calls[fid.name] = self.fidelity_calls.get(fid.name, 0) + len(candidates) * len(seeds)
        rows = [self.base + sum(float(self.costs[i, c]) for i, c in enumerate(cand)) for cand in candidates]
        out = torch.tensor(rows)[:, None] + self._seed_noise(seeds)[None, :]
        if fid.kind != "full":
            skipped = 1 - fid.model_calls(self.calls_for) / self.calls_for(None)
            err = [self.preview_noise * skipped * ((derive_seed(0, tuple(c), fid.name) % 1000) / 1000 - 0.5)
                   for c in candidates]
            out = out + torch.tensor(err)[:, None]
        return out

    def calls_for(self, steps=None) -> int:
        return self.sampling.steps if steps is None else steps

    def losses(self, pairs, seeds, keep_images=False):
        raise NotImplementedError("SyntheticProblem scores candidates, not prompt texts")

    def relaxation(self):
        def loss(weights, seeds, *, start_step, grad_steps):
            # weights [S, O] (one relaxed prompt for every seed) or [B, S, O] (row b for seeds[b])
            value = self.base + (weights * self.relaxed_costs).sum(dim=(-2, -1))
            return value + self._seed_noise(seeds)

        return loss


def synthetic_space(num_slots: int, num_options: int, target: str = "positive"):
    """A space over the prompt ``"w0 w1 ... w{n-1}"`` with ``num_options`` options per slot."""
    from dpo_diff.space import SearchSpace, Slot

    words = [f"w{i}" for i in range(num_slots)]
    if target == "positive":
        slots = [Slot("positive", w, (w, *(f"{w}x{o}" for o in range(1, num_options))), i)
                 for i, w in enumerate(words)]
    else:
        slots = [Slot("negative", w, ("", *(f"{w}x{o}" for o in range(1, num_options))), i)
                 for i, w in enumerate(words)]
    return SearchSpace(" ".join(words), tuple(slots))


def record_scheduler_steps(scheduler) -> tuple[list, list]:
    """Wrap ``scheduler.step`` (in place) to record the latents entering each step and each step's
    ``pred_original_sample`` (the scheduler's own x0 estimate); returns the two lists, filled as a pipeline runs."""
    entering, x0 = [], []
    step = scheduler.step

    def recording_step(model_output, timestep, sample, *args, return_dict=True, **kwargs):
        entering.append(sample.clone())
        out = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        x0.append(out.pred_original_sample)
        return out if return_dict else (out.prev_sample,)

    scheduler.step = recording_step
    return entering, x0


def assert_close_records(got, want, rel: float = 1e-5, path: str = "") -> None:
    """Assert two JSON-like records are equal, floats within ``rel`` (batch composition changes the last bits of
    float results, e.g. when a resumed run evaluates a candidate in a smaller batch)."""
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and isinstance(want, (int, float)), f"{path}: {got!r} != {want!r}"
        assert abs(got - want) <= rel * max(1.0, abs(want)), f"{path}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{path}: keys {got!r} != {want!r}"
        for k in want:
            assert_close_records(got[k], want[k], rel, f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close_records(g, w, rel, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
