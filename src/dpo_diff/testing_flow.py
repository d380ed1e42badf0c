"""Tiny random flow-matching pipelines for tests, examples and CPU smoke runs: SD 3.x and FLUX.1 shapes.

:func:`save_tiny_sd3` writes a complete ``StableDiffusion3Pipeline`` folder (two CLIP text encoders with
projection, a T5 encoder, a one-layer MMDiT, a one-block VAE) and :func:`save_tiny_flux` a ``FluxPipeline`` folder
(CLIP + T5, a one-layer FLUX transformer, dev-style with the guidance embedding or schnell-style without). Both use
the shipped CLIP BPE and :func:`tiny_t5_tokenizer`, a small SentencePiece-style Unigram tokenizer built in memory
(never a download), and load through the same ``from_pretrained`` path as the real models.
"""

from __future__ import annotations

from pathlib import Path

T5_WORDS = (
    "a an the of on in at and with to red green blue yellow purple orange white black gray grey brown pink dark "
    "light big small large tiny huge circle square triangle diamond orb star cat dog fox car truck van road snowy "
    "sunny dry snow sand water grass photo picture painting blurry low quality ugly bad sea golden hound puppy "
    "crimson left right center background forest house tree sky sun moon bright deep"
).split()
"""Whole-word pieces of the tiny T5 tokenizer; other words split into suffixes and single letters (multi-piece)."""
T5_SUBWORDS = ("er", "ers", "ing", "ed", "s", "es", "ly", "ness", "retriev", "un", "re")


def tiny_t5_tokenizer(model_max_length: int = 512, whitespace_split: bool = True):
    """A small T5-style fast tokenizer built offline with ``tokenizers``: a Unigram model over ``"▁"``-marked words
    (SentencePiece's word-start marker), subwords and single characters, NFKC normalisation, whitespace split then
    Metaspace (as transformers' ``T5TokenizerFast``; ``whitespace_split=False``: Metaspace alone, as some converted
    ``tokenizer.json`` files have it), ``<pad>`` = 0, ``</s>`` = 1 appended to every text, no BOS."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from tokenizers import decoders as dec
    from transformers import T5TokenizerFast

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = specials + [("\u2581" + w, -2.0) for w in T5_WORDS]
    pieces += [(s, -4.0) for s in T5_SUBWORDS] + [("\u2581" + s, -5.0) for s in T5_SUBWORDS]
    pieces += [(c, -6.0) for c in letters + ",.!?'-()"] + [("\u2581" + c, -7.0) for c in letters + ",.!?"]
    pieces += [("\u2581", -8.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace]) if whitespace_split
                         else metaspace)
    tok.decoder = dec.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", model_max_length=model_max_length)


def _clip_tokenizer(pad_token: str | None = None):
    from transformers import CLIPTokenizer

    from dpo_diff.resources import clip_tokenizer_path

    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_path()), **kwargs)


def _add_bpe_files(folder: Path) -> None:
    """Put the vocab.json/merges.txt beside the saved tokenizer.json, as in the real models' folders (what
    :func:`dpo_diff.tokenization.load_tokenizer` reads)."""
    import shutil

    from dpo_diff.resources import clip_tokenizer_path

    for name in ("vocab.json", "merges.txt"):
        shutil.copy(clip_tokenizer_path() / name, folder / name)


def _clip_text(hidden: int, projection: int | None, seed: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden,
                            intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                            max_position_embeddings=77, projection_dim=projection or hidden, hidden_act="gelu")
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(d_model: int, vocab: int, seed: int):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="gated-gelu"))


def _vae(latent_channels: int, size: int, seed: int, *, scaling: float, shift: float | None):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         latent_channels=latent_channels, norm_num_groups=4,
                         sample_size=size, scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                         use_post_quant_conv=False)


def save_tiny_sd3(path: str | Path, *, seed: int = 0, sample_size: int = 16, dynamic_shift: bool = False) -> Path:
    """Save a tiny random ``StableDiffusion3Pipeline`` folder (``sample_size`` px; VAE factor 1, patch size 1).

    CLIP-L and CLIP-G stand-ins (hidden 32, projection 32: pooled 64), T5 with d_model 64 (the CLIP hidden states,
    concatenated to 64, are zero-padded to T5's width as the pipeline does). The scheduler shifts by 3.0 as SD 3.5's
    does; ``dynamic_shift`` switches to the resolution-dependent shift (``mu``) instead.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(sample_size=sample_size, patch_size=1, in_channels=4, num_layers=1,
                                            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                            caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                            pos_embed_max_size=sample_size * 2)
        te, te2 = _clip_text(32, 32, seed + 1), _clip_text(32, 32, seed + 2)
        t5_tok = tiny_t5_tokenizer()
        te3 = _t5(64, len(t5_tok), seed + 3)
        vae = _vae(4, sample_size, seed + 4, scaling=1.5305, shift=0.0609)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic_shift,
                                            base_image_seq_len=16, max_image_seq_len=1024)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=sched, vae=vae, text_encoder=te,
                                    tokenizer=_clip_tokenizer(), text_encoder_2=te2,
                                    tokenizer_2=_clip_tokenizer(pad_token="!"), text_encoder_3=te3,
                                    tokenizer_3=t5_tok)
    pipe.save_pretrained(path)
    _add_bpe_files(path / "tokenizer")
    _add_bpe_files(path / "tokenizer_2")
    return path


def save_tiny_flux(path: str | Path, *, seed: int = 0, sample_size: int = 16, variant: str = "dev") -> Path:
    """Save a tiny random ``FluxPipeline`` folder (``sample_size`` px: the VAE's ``sample_size``, factor 1).

    ``variant="dev"``: the guidance embedding and the resolution-dependent timestep shift (FLUX.1-dev's scheduler
    config); ``"schnell"``: neither (FLUX.1-schnell's). CLIP (hidden 32, pooled 32) and T5 (d_model 32).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    if variant not in ("dev", "schnell"):
        raise ValueError(f"variant must be 'dev' or 'schnell', got {variant!r}")
    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                             guidance_embeds=variant == "dev")
        te = _clip_text(32, None, seed + 1)
        t5_tok = tiny_t5_tokenizer()
        te2 = _t5(32, len(t5_tok), seed + 2)
        vae = _vae(1, sample_size, seed + 3, scaling=0.3611, shift=0.1159)
    if variant == "dev":
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=16, max_image_seq_len=1024)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=_clip_tokenizer(), text_encoder_2=te2,
                        tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(path)
    _add_bpe_files(path / "tokenizer")
    return path


def random_flow_backend(arch: str, device: str = "cpu", dtype: str = "fp32", size: str = "tiny"):
    """A flow-matching backend with random weights, for benchmarks where costs, not values, matter.

    ``arch``: ``sd3`` or ``flux``. ``size="tiny"``: the test models above (16 px), loaded from a saved folder;
    ``"full"``: SD 3.5 medium shapes (2.5 B MMDiT with dual attention, CLIP-L, CLIP-G, T5-XXL; 1024 px) or FLUX.1-dev
    shapes (12 B transformer, CLIP-L, T5-XXL; 1024 px), built directly in ``dtype`` on ``device``; the T5 tokenizer
    is the tiny one (memory depends on ``max_sequence_length`` tokens, not on the vocabulary).
    """
    import tempfile

    from dpo_diff.backends.base import load_backend

    if arch not in ("sd3", "flux") or size not in ("tiny", "full"):
        raise ValueError(f"arch must be 'sd3' or 'flux' and size 'tiny' or 'full', got {arch!r}, {size!r}")
    if size == "tiny":
        save = save_tiny_sd3 if arch == "sd3" else save_tiny_flux
        return load_backend(str(save(Path(tempfile.mkdtemp()) / arch)), device=device, dtype=dtype)
    return _full_backend(arch, device, dtype)


def _full_backend(arch: str, device: str, dtype: str):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from dpo_diff.backends.flow import DTYPES

    torch_dtype = DTYPES[dtype]

    def clip(hidden: int, layers: int, heads: int, ff: int, projection: bool):
        config = CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=ff, projection_dim=hidden, vocab_size=49408,
                                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                                pad_token_id=49407, hidden_act="gelu" if hidden > 768 else "quick_gelu")
        return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)

    t5_tok = tiny_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # build in the target dtype: FLUX's 12 B parameters in fp32 would be 48 GB
    try:
        with torch.device(device):
            t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                         num_heads=64, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                         pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
            vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=16, layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
                                scaling_factor=1.5305 if arch == "sd3" else 0.3611,
                                shift_factor=0.0609 if arch == "sd3" else 0.1159)
            if arch == "sd3":
                transformer = SD3Transformer2DModel(
                    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                    dual_attention_layers=tuple(range(13)))
                encoders = [clip(768, 12, 12, 3072, True), clip(1280, 32, 20, 5120, True), t5]
            else:
                transformer = FluxTransformer2DModel(
                    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                    axes_dims_rope=(16, 56, 56))
                encoders = [clip(768, 12, 12, 3072, False), t5]
    finally:
        torch.set_default_dtype(previous)
    if arch == "sd3":
        from dpo_diff.backends.sd3 import StableDiffusion3Backend

        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        toks = [_clip_tokenizer(), _clip_tokenizer(pad_token="!"), t5_tok]
        return StableDiffusion3Backend(toks, encoders, transformer, vae, sched, device=device, dtype=torch_dtype)
    from dpo_diff.backends.flux import FluxBackend

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                            max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    return FluxBackend([_clip_tokenizer(), t5_tok], encoders, transformer, vae, sched, device=device,
                       dtype=torch_dtype)
