"""Build or inspect DPO-Diff search spaces (synonym, antonym, NPLib, hybrid).

  dpo-diff space build --prompt "a red car on a wet street" --kind antonym --out spaces.json
  dpo-diff space build --prompts prompts.txt --kind synonym --lexicon llm --llm-model gpt-4o --out spaces.json
  dpo-diff space show spaces.json --prompt "a red car on a wet street"

The default lexicon is the offline WordNet one; rerunning an interrupted build resumes it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

KINDS = ("synonym", "antonym", "nplib", "hybrid")
LEXICONS = ("wordnet", "llm", "file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="space_command", metavar="{build,show}")
    sub.required = True

    b = sub.add_parser("build", help="build spaces for one prompt or a file of prompts",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user prompt")
    src.add_argument("--prompts", metavar="FILE", help="prompt file: one per line, a JSON list or {prompt: ...}")
    b.add_argument("--kind", choices=KINDS, default="antonym",
                   help="synonym (positive, attack), antonym or nplib (negative, improve), hybrid (both)")
    b.add_argument("--lexicon", default="wordnet", help=f"substitute source: {', '.join(LEXICONS)}")
    b.add_argument("--lexicon-file", metavar="FILE", help="space file to replay with --lexicon file")
    b.add_argument("--out", required=True, help="JSON file that holds all spaces (created or extended)")
    b.add_argument("--max-options", type=int, default=5, help="substitutes per word (paper: 5)")
    b.add_argument("--with-nplib", action="store_true", help="also add the NPLib slots (e.g. to an antonym space)")
    b.add_argument("--nplib-slots", type=int, default=4, help="number of NPLib slots (paper: 4)")
    b.add_argument("--negative-prompt", default="", help="fixed negative prompt the searched terms are appended to")
    b.add_argument("--overrides", metavar="FILE", help="JSON/YAML file of extra or forbidden substitutes")
    b.add_argument("--similarity-threshold", type=float, default=None,
                   help="meaning constraint: drop single substitutions below this cosine similarity (synonym and "
                        "hybrid spaces default to 0.9; 0 disables)")
    b.add_argument("--similarity-model", default=None,
                   help="sentence-transformers model for the constraint (default: offline all-MiniLM-L6-v2; paper: "
                        "sentence-transformers/sentence-t5-base)")
    b.add_argument("--model", default=None, help="diffusion model folder or hub id whose tokenizer to report "
                                                  "(default: the bundled SD 1.x CLIP tokenizer)")
    b.add_argument("--no-resume", action="store_true", help="rebuild prompts already in --out")
    b.add_argument("--keep-going", action="store_true", help="skip prompts that fail instead of stopping")
    g = b.add_argument_group("LLM lexicon (any OpenAI-compatible endpoint)")
    g.add_argument("--llm-base-url", default=None, help="endpoint, e.g. http://127.0.0.1:8000/v1 "
                                                         "(default: $OPENAI_BASE_URL or OpenAI)")
    g.add_argument("--llm-model", default=None, help="model name on the endpoint, e.g. gpt-4o")
    g.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    g.add_argument("--llm-cache", default=None, help="response cache folder (default: ~/.cache/dpo-diff/llm)")
    g.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--llm-attempts", type=int, default=5, help="attempts per prompt before giving up")

    s = sub.add_parser("show", help="print the slots of spaces and how each option tokenizes")
    s.add_argument("path", help="space file (ours or the reference layout)")
    s.add_argument("--prompt", default=None, help="only this prompt")
    s.add_argument("--model", default=None, help="diffusion model folder or hub id whose tokenizer to use; a full "
                                                  "model also gets the relaxation gap measured with its text encoder")
    s.add_argument("--gap-corners", type=int, default=64, metavar="N",
                   help="with --model: one-hot corners per side to compare with the rendered text (all of them when "
                        "fewer; 0: do not load the text encoder)")


def _make_lexicon(args: argparse.Namespace) -> Any:
    from dpo_diff.cli import UserError
    from dpo_diff.lexicons import LEXICONS as KNOWN
    from dpo_diff.lexicons import get_lexicon

    common = {"max_options": args.max_options}
    if args.lexicon not in KNOWN:
        raise UserError(f"unknown lexicon {args.lexicon!r}; choose one of {', '.join(KNOWN)}")
    if args.lexicon == "llm":
        from dpo_diff.lexicons.llm import check_llm_limits

        check_llm_limits(args.llm_timeout, args.llm_attempts)
        if not args.llm_model:
            raise UserError("--lexicon llm needs --llm-model (the model name on the endpoint, e.g. gpt-4o)")
        return get_lexicon("llm", model=args.llm_model, base_url=args.llm_base_url,
                           api_key_env=args.llm_api_key_env, cache_dir=args.llm_cache, timeout=args.llm_timeout,
                           max_attempts=args.llm_attempts, n=args.max_options, **common)
    if args.lexicon == "file":
        if not args.lexicon_file:
            raise UserError("--lexicon file needs --lexicon-file (a space file to replay)")
        return get_lexicon("file", path=args.lexicon_file, **common)
    return get_lexicon("wordnet", **common)


def _build(args: argparse.Namespace) -> int:
    from dpo_diff.cli import UserError
    from dpo_diff.space_builder import (
        DEFAULT_SIMILARITY_THRESHOLD,
        build_spaces,
        load_overrides,
        meaning_constraint_for,
        read_prompts,
    )

    if args.similarity_threshold is not None and not 0.0 <= args.similarity_threshold <= 1.0:
        raise UserError(f"--similarity-threshold must be in [0, 1], got {args.similarity_threshold}")
    from dpo_diff.files import check_output_file

    check_output_file(args.out, example="spaces.json")  # before the work, not after it
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    if not any(p.strip() for p in prompts):
        raise UserError("--prompt is empty; give the text you want to generate")
    lexicon = _make_lexicon(args) if args.kind != "nplib" else None
    overrides = load_overrides(args.overrides) if args.overrides else None
    threshold = DEFAULT_SIMILARITY_THRESHOLD if args.similarity_threshold is None else args.similarity_threshold
    constraint = meaning_constraint_for(args.kind, threshold, args.similarity_model)  # as optimize and bench
    tokenizer = _tokenizer(args.model)
    _warn_long_prompts(prompts, tokenizer)

    def progress(i: int, n: int, prompt: str, status: str) -> None:
        print(f"[{i + 1}/{n}] {status}: {prompt}", file=sys.stderr)

    from dpo_diff.files import output_lock

    with output_lock(args.out, is_file=True):  # a second build into the same file is refused, naming this pid
        report = build_spaces(prompts, args.kind, lexicon, out=args.out, resume=not args.no_resume,
                              on_error="skip" if args.keep_going else "raise", progress=progress,
                              constraint=constraint, overrides=overrides, negative_prompt=args.negative_prompt,
                              nplib=True if args.with_nplib else None, nplib_num_slots=args.nplib_slots)
    from dpo_diff.tokenization import report_summary, tokenization_report

    for prompt in prompts:
        space = report.spaces.get(prompt)
        if space is None:
            continue
        summary = report_summary(tokenization_report(space, tokenizer))
        print(f"{prompt!r}: {len(space.slots)} slots, {space.num_candidates} candidates, "
              f"{summary['single_token_options']}/{summary['options']} options are single tokens")
    for warning in report.warnings.values():
        print(f"warning: {warning}", file=sys.stderr)
    for prompt, error in report.failed.items():
        print(f"failed: {prompt!r}: {error}", file=sys.stderr)
    if report.built:
        written = f" -> {args.out}"
    else:  # say so instead of pointing at a file this build did not write
        written = f" (nothing new written; {args.out} has the reused ones)" if report.reused else "; nothing written"
    print(f"{len(report.built)} built, {len(report.reused)} reused, {len(report.failed)} failed{written}")
    return 1 if report.failed else 0


def _warn_long_prompts(prompts: list[str], tokenizer: Any) -> None:
    """Warn about prompts the text encoder cannot take whole (chunked for SD/SDXL, refused by other backbones)."""
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if limit > 10_000:  # "unbounded" placeholder of tokenizers without a configured length
        limit = 77
    for prompt in prompts:
        n = len(tokenizer(prompt, truncation=False).input_ids)
        if n > limit:
            print(f"warning: {prompt[:60]!r}{'...' if len(prompt) > 60 else ''} has {n} tokens but the text "
                  f"encoder takes {limit}: SD 1.x/2.x and SDXL encode it in chunks of {limit - 2} tokens (as compel "
                  f"and the web UIs do), other backbones' 'dpo-diff optimize' will refuse it", file=sys.stderr)


def _tokenizer(model: str | None) -> Any:
    from dpo_diff.tokenization import load_tokenizer

    return load_tokenizer(model)


def _show(args: argparse.Namespace) -> int:
    from dpo_diff.space import load_space, load_spaces
    from dpo_diff.tokenization import tokenization_report

    spaces = [load_space(args.path, args.prompt)] if args.prompt else list(load_spaces(args.path).values())
    tokenizer = _tokenizer(args.model)
    backend = _gap_backend(args.model) if args.model and args.gap_corners > 0 else None
    for space in spaces:
        meta = dict(space.meta)
        print(f"prompt: {space.prompt!r}  kind: {meta.get('kind', '?')}  slots: {len(space.slots)}  "
              f"candidates: {space.num_candidates}")
        if space.negative_prompt:
            print(f"  fixed negative prompt: {space.negative_prompt!r}")
        if meta.get("warning"):
            print(f"  warning: {meta['warning']}")
        for st in tokenization_report(space, tokenizer):
            label = st.word or "(nplib)"
            print(f"  [{st.slot}] {st.target} {label}: {st.single_token_options}/{len(st.options)} single-token")
            shown = [(o.option or '""') + (" " + "|".join(o.tokens) if o.tokens else "") for o in st.options]
            print("      " + "; ".join(shown))
        if backend is not None:
            print("  " + _gap_line(space, backend, args.gap_corners))
    return 0


def _gap_backend(model: str) -> Any:
    """The model's text side for the gap, or None (printed) when ``model`` is only a tokenizer."""
    from dpo_diff.backends.base import UnsupportedModelError, load_backend
    from dpo_diff.loading import ModelNotFoundError

    try:
        return load_backend(model)
    except (ModelNotFoundError, UnsupportedModelError) as e:
        print(f"relaxation gap not measured: {str(e).splitlines()[0]}", file=sys.stderr)
        return None


def _gap_line(space: Any, backend: Any, corners: int) -> str:
    """How far the relaxation's one-hot corners encode from their rendered text (0: exactly the text)."""
    from dpo_diff.relax import PromptTooLongError
    from dpo_diff.relax_gaps import corner_gaps

    try:
        gaps = corner_gaps(space, backend, max_corners=corners)
    except PromptTooLongError as e:
        return f"relaxation: {e}"
    named = len({g.encoder for g in gaps}) > 1  # several text encoders (SDXL, SD 3, FLUX): say which
    parts = [f"{g.encoder + ' ' if named else ''}{g.side} {g.max_abs:.3g} (scale {g.scale:.3g}; "
             f"{g.corners}/{g.total} corners, {g.token_mismatches} tokenized differently)" for g in gaps]
    return "relaxation gap, max |one-hot relaxed - rendered text| of the text encoder: " + ("; ".join(parts) or
                                                                                           "no slots")


def run(args: argparse.Namespace) -> int:
    if args.space_command == "build":
        return _build(args)
    return _show(args)
