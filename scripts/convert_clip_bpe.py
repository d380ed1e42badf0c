"""Convert CLIP's BPE file into a Hugging Face ``CLIPTokenizer`` folder (vocab.json + merges.txt).

The MIT-licensed ``bpe_simple_vocab_16e6.txt.gz`` from OpenAI CLIP (also inside the ``open_clip_torch`` wheel) is
the tokenizer every Stable Diffusion 1.x model uses. No model hub is reachable from our build machines, so we
vendor the converted tokenizer as package data and rebuild it with this script:

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip -o /tmp/oc/open_clip_torch-*.whl \
        'open_clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/oc
    python scripts/convert_clip_bpe.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz src/dpo_diff/data/clip_tokenizer

The construction follows CLIP's own ``SimpleTokenizer``: merges are lines 1..48894 of the file; the vocabulary is
the 256 byte-level unicode characters, the same with ``</w>``, every joined merge, then the two special tokens.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary size minus byte tokens and the two specials


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table (CLIP reuses it)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def convert(bpe_path: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out", type=Path, help="output tokenizer folder")
    args = parser.parse_args()
    convert(args.bpe, args.out)


if __name__ == "__main__":
    main()
