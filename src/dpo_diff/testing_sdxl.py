"""A tiny random Stable Diffusion XL pipeline for tests, examples and CPU smoke runs.

:func:`save_tiny_sdxl` writes a complete ``StableDiffusionXLPipeline`` folder that loads through the same
``from_pretrained`` path as the real SDXL: two CLIP text encoders of different widths (the second with a text
projection, pooled at EOS with the legacy ``eos_token_id = 2`` argmax rule the released SDXL configs use), two copies
of the shipped CLIP BPE tokenizer (the second pads with ``"!"`` as SDXL's ``tokenizer_2`` does), a ``text_time``
UNet (``add_time_ids`` + pooled text) and a VAE with ``force_upcast``. :func:`sdxl_components` builds the full-size
architecture with random weights for memory benchmarks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dpo_diff.resources import clip_tokenizer_path


def save_tiny_sdxl(path: str | Path, *, seed: int = 0, sample_size: int = 8,
                   force_zeros_for_empty_prompt: bool = True) -> Path:
    """Save a tiny random SDXL pipeline folder (image size ``sample_size * 2`` px; Euler scheduler, as SDXL)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    widths, projection = (32, 48), 24
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + projection,
            cross_attention_dim=sum(widths), norm_num_groups=4,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16), in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, norm_num_groups=4,
            sample_size=sample_size * 2, scaling_factor=0.13025, force_upcast=True,
        )
        # The released SDXL text encoder configs keep transformers' legacy ids (bos 0, eos 2, pad 1): pooling then
        # takes the argmax of input_ids, i.e. the first EOS (49407, the largest id).
        common = dict(intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, vocab_size=49408,
                      max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=widths[0], num_hidden_layers=3,
                                                    hidden_act="quick_gelu", **common))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=widths[1], num_hidden_layers=3, hidden_act="gelu", projection_dim=projection, **common))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    # SDXL's scheduler_config.json carries DDIM's keys too, so DDIM built from it does not clip x0.
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)
    # Loaded from the shipped files and written by save_pretrained (a copied special_tokens_map.json would
    # override tokenizer_2's "!" padding when the folder is loaded).
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    tokenizer_2 = CLIPTokenizer.from_pretrained(clip_tokenizer_path(), pad_token="!")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                                     add_watermarker=False)
    pipe.save_pretrained(path)
    for folder in ("tokenizer", "tokenizer_2"):  # the BPE files too, as the released SDXL folders have them
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(clip_tokenizer_path() / name, path / folder / name)
    return path


def sdxl_components(device: str = "cpu", dtype: str = "bf16") -> dict:
    """SDXL-base shapes with random weights (2.6 B UNet, CLIP ViT-L + OpenCLIP ViT-bigG, 1024 px VAE) as the keyword
    arguments of :class:`~dpo_diff.backends.sdxl.StableDiffusionXLBackend`, for benchmarks where costs matter."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from dpo_diff.backends.diffusers_sd import DTYPES

    dt = DTYPES[dtype]
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).to(dt)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=1024,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, scaling_factor=0.13025, force_upcast=True).to(dt)
        common = dict(vocab_size=49408, max_position_embeddings=77)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, hidden_act="quick_gelu", **common)).to(dt)
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
            hidden_act="gelu", projection_dim=1280, **common)).to(dt)
    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    tok_2 = CLIPTokenizer.from_pretrained(clip_tokenizer_path(), pad_token="!")
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    return dict(tokenizer=tok, text_encoder=text, tokenizer_2=tok_2, text_encoder_2=text_2, unet=unet, vae=vae,
                scheduler=sched)


def random_sdxl_backend(device: str = "cpu", dtype: str = "fp32", size: str = "tiny"):
    """An SDXL backend with random weights: ``tiny`` (16 px, saved and loaded as a folder) or ``full`` (SDXL-base
    shapes, 1024 px, built directly on ``device``), for benchmarks where costs, not values, matter."""
    import tempfile

    from dpo_diff.backends.diffusers_sd import DTYPES
    from dpo_diff.backends.sdxl import StableDiffusionXLBackend

    if size == "tiny":
        return StableDiffusionXLBackend.from_pretrained(str(save_tiny_sdxl(Path(tempfile.mkdtemp()) / "sdxl")),
                                                        device=device, dtype=dtype)
    if size != "full":
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    return StableDiffusionXLBackend(**sdxl_components(device, dtype), device=device, dtype=DTYPES[dtype])
