"""Tiny random vision-language models for tests of the VQA judge, built from configs and saved with
``save_pretrained`` (no downloads): a LLaVA-1.5-style model (CLIP vision tower, Llama language model, CLIP image
processor, LLaVA's "USER: <image>\\n... ASSISTANT:" template) and a Qwen2-VL one (its patch-merging vision tower,
M-RoPE, ``Qwen2VLImageProcessor``, ChatML template). Both share a word-level tokenizer trained in memory on the
words the tests use, with each family's special tokens."""

from __future__ import annotations

from pathlib import Path

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
            "<|vision_end|>", "<|im_start|>", "<|im_end|>")
WORDS = ("Does this figure show \" ? Please answer yes or no . Yes No Sure USER : ASSISTANT user assistant a an "
         "photo of red blue green big small happy dog cat hound puppy on the grass sand in")


def tiny_vlm_tokenizer():
    """A word-level fast tokenizer (punctuation split off) over :data:`WORDS` and the families' special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def save_tiny_llava(folder: str | Path, *, image_size: int = 32, chat_template: str | None = LLAVA_TEMPLATE,
                    dropout: float = 0.0, seed: int = 0) -> str:
    """A 2-layer LLaVA (CLIP ViT patch 8 at ``image_size``, Llama h32) with its tokenizer, CLIP image processor
    (shortest edge + centre crop) and chat template (``None``: none) in ``folder``."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = tiny_vlm_tokenizer()
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=image_size, patch_size=8,
                                       attention_dropout=dropout),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                                attention_dropout=dropout),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    proc = CLIPImageProcessor(size={"shortest_edge": image_size},
                              crop_size={"height": image_size, "width": image_size})
    return _save(folder, model, tok, proc, chat_template)


def save_tiny_qwen2vl(folder: str | Path, *, max_pixels: int = 32 * 32, seed: int = 0) -> str:
    """A 2-layer Qwen2-VL (vision patch 4, merge 2, temporal patch 2; language h32 with M-RoPE) with its tokenizer,
    ``Qwen2VLImageProcessor`` (``smart_resize`` between 16x16 and ``max_pixels``) and ChatML template."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tok = tiny_vlm_tokenizer()
    ids = {n: tok.convert_tokens_to_ids(n) for n in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                      "<|vision_end|>")}
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 10000.0}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    proc = Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=max_pixels, patch_size=4, merge_size=2,
                                 temporal_patch_size=2)
    return _save(folder, model, tok, proc, QWEN_TEMPLATE)


def _save(folder: str | Path, model, tok, proc, chat_template: str | None) -> str:
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    proc.save_pretrained(folder)
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template)
    return str(folder)
