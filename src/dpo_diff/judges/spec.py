"""Judge and objective specs: parsing (no torch) and loading (the registry of judge families).

A *judge spec* names one judge: ``KIND:SOURCE[key=value;key=value]``.

* ``clip:openai/clip-vit-large-patch14`` - any transformers ``CLIPModel`` id or folder (PickScore v1 is one);
* ``siglip:google/siglip-base-patch16-224`` - any transformers ``SiglipModel`` id or folder;
* ``aesthetic:FILE[clip=openai/clip-vit-large-patch14]`` - the LAION aesthetic predictor (an MLP on unit CLIP
  ViT-L/14 image embeddings) from a user-given weights file; ``clip=`` names its CLIP backbone;
* ``vqa:Qwen/Qwen2-VL-2B-Instruct`` - VQAScore, ``-log P("Yes")`` of an image-text-to-text model asked whether the
  image shows the prompt (LLaVA-1.5, Qwen2-VL, Qwen2.5-VL; :mod:`.vqa`); option ``dtype=fp32|bf16|fp16``;
* ``checker`` - the shapes world's ground-truth checker (evaluation only: it has no gradient).

``SOURCE`` may be ``world:judge`` or ``world:judge_b`` (CLIP) or ``world:vqa`` (a VQAScore-style judge: a tiny LLaVA
trained apart from the checker) for the shapes world's bundled judges; the bare ``world:NAME`` is short for the
spec with its kind (``world:vqa`` = ``vqa:world:vqa``, ``world:judge`` = ``clip:world:judge``). Options:
``checkpointing=1`` (gradient checkpointing of the vision tower: less memory for the shortcut gradient).

An *objective spec* is a comma-separated list of terms, each a judge spec with a weight (``=W``, default 1) or a
constraint (``<=+M``: the term's loss may rise at most ``M`` above the user prompt's on the same seeds)::

    clip:openai/clip-vit-large-patch14=1,aesthetic:sac+logos+ava1-l14-linearMSE.pth=0.2
    aesthetic:FILE=1,clip:openai/clip-vit-large-patch14<=+0.02

Paths with commas, ``[`` or ``<=`` are not supported in specs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JUDGE_KINDS = ("clip", "siglip", "aesthetic", "vqa", "checker")
DEFAULT_AESTHETIC_BACKBONE = "openai/clip-vit-large-patch14"
_OPTIONS = {"clip": ("checkpointing",), "siglip": ("checkpointing",), "aesthetic": ("clip", "checkpointing"),
            "vqa": ("checkpointing", "dtype"), "checker": ()}
VQA_DTYPES = ("fp32", "bf16", "fp16")
WORLD_JUDGES = {"judge": "clip", "judge_b": "clip", "vqa": "vqa"}  # the shapes world's judges and their kinds
_WEIGHT_RE = re.compile(r"^(?P<judge>.*?)(?:=(?P<weight>[-+0-9.eE]+))?$")


@dataclass(frozen=True)
class JudgeSpec:
    """One judge: its family, where its weights are, and options (see the module docstring)."""

    kind: str
    source: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        opts = f"[{';'.join(f'{k}={v}' for k, v in self.options)}]" if self.options else ""
        return f"{self.kind}:{self.source}{opts}" if self.source else f"{self.kind}{opts}"

    @property
    def label(self) -> str:
        """A short name for tables: the kind and the last part of the source."""
        if not self.source:
            return self.kind
        return f"{self.kind}:{self.source.rstrip('/').split('/')[-1]}"


@dataclass(frozen=True)
class TermSpec:
    """A term of an objective: a weighted judge loss, or a constraint (``margin`` set, ``weight`` 0)."""

    judge: JudgeSpec
    weight: float = 1.0
    margin: float | None = None  # constraint: term <= user prompt's + margin (same seeds)

    @property
    def is_constraint(self) -> bool:
        return self.margin is not None

    def __str__(self) -> str:
        # repr: the saved spec must read back to the same floats (":g" would round 0.1234567 to 0.123457)
        return f"{self.judge}<=+{self.margin!r}" if self.is_constraint else f"{self.judge}={self.weight!r}"


@dataclass(frozen=True)
class ObjectiveSpec:
    terms: tuple[TermSpec, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return ",".join(map(str, self.terms))

    @property
    def weighted(self) -> tuple[TermSpec, ...]:
        return tuple(t for t in self.terms if not t.is_constraint)

    @property
    def constraints(self) -> tuple[TermSpec, ...]:
        return tuple(t for t in self.terms if t.is_constraint)


def parse_judge(text: str) -> JudgeSpec:
    """``KIND:SOURCE[opts]`` -> :class:`JudgeSpec` (raises ``ValueError`` saying what is allowed)."""
    text = text.strip()
    opts: list[tuple[str, str]] = []
    if text.endswith("]") and "[" in text:
        text, _, raw = text[:-1].partition("[")
        for item in filter(None, (s.strip() for s in raw.split(";"))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"judge option {item!r} is not key=value (in {text}[{raw}])")
            opts.append((key.strip(), value.strip()))
    kind, _, source = text.partition(":")
    kind, source = kind.strip().lower(), source.strip()
    if kind == "world":  # the bare world:NAME: the kind is the shipped judge's own
        if source not in WORLD_JUDGES:
            raise ValueError(f"the shapes world has no judge {source!r}; it has "
                             f"{', '.join('world:' + n for n in WORLD_JUDGES)}")
        kind, source = WORLD_JUDGES[source], f"world:{source}"
    name = source.removeprefix("world:") if source.startswith("world:") else None
    if name in WORLD_JUDGES and kind in ("clip", "siglip", "vqa") and WORLD_JUDGES[name] != kind:
        raise ValueError(f"{source} is a {WORLD_JUDGES[name]} judge, not {kind}: write "
                         f"{WORLD_JUDGES[name]}:{source} (or just {source})")
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown judge kind {kind!r} in {text!r}; choose one of {', '.join(JUDGE_KINDS)} "
                         f"(e.g. clip:openai/clip-vit-large-patch14)")
    if kind != "checker" and not source:
        raise ValueError(f"judge {text!r} needs a source: {kind}:HUB_ID_OR_FOLDER"
                         + (" (aesthetic: the predictor's weights file)" if kind == "aesthetic" else ""))
    if kind == "checker" and source:
        raise ValueError(f"the checker takes no source (it is the shapes world's), got {text!r}")
    bad = [k for k, _ in opts if k not in _OPTIONS[kind]]
    if bad:
        raise ValueError(f"unknown option(s) {bad} for {kind} judges; allowed: {', '.join(_OPTIONS[kind]) or 'none'}")
    dtype = dict(opts).get("dtype")
    if dtype is not None and dtype not in VQA_DTYPES:
        raise ValueError(f"judge {text!r}: dtype={dtype!r} is not one of {', '.join(VQA_DTYPES)}")
    return JudgeSpec(kind, source, tuple(opts))


def parse_judges(text: str | list[str] | tuple[str, ...] | None) -> tuple[JudgeSpec, ...]:
    """A comma-separated list (or a list) of judge specs, e.g. for ``--eval-judges``."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else [s for t in text for s in t.split(",")]
    return tuple(parse_judge(s) for s in items if s.strip())


def parse_objective(text: str) -> ObjectiveSpec:
    """``judge=W,judge<=+M,...`` -> :class:`ObjectiveSpec` (see the module docstring)."""
    terms = []
    for raw in (s.strip() for s in text.split(",")):
        if not raw:
            continue
        if "<=" in raw:
            judge, _, bound = raw.partition("<=")
            try:
                margin = float(bound.strip())
            except ValueError:
                raise ValueError(f"constraint {raw!r}: the bound after <= must be a number like +0.02") from None
            if not (math.isfinite(margin) and margin >= 0):
                raise ValueError(f"constraint {raw!r}: the margin must be >= 0 (the user prompt must be feasible), "
                                 f"got {margin}")
            terms.append(TermSpec(parse_judge(judge), 0.0, margin))
            continue
        m = _WEIGHT_RE.match(raw)
        judge, weight = (m.group("judge"), m.group("weight")) if m and not raw.endswith("]") else (raw, None)
        if weight is None and "=" in re.sub(r"\[[^\]]*\]", "", raw):  # 'clip:J=abc': never part of a name
            raise ValueError(f"term {raw!r}: the weight after = must be a number, e.g. "
                             f"{raw.rsplit('=', 1)[0]}=0.5 (options go in brackets: aesthetic:FILE[clip=ID])")
        try:
            w = 1.0 if weight is None else float(weight)
        except ValueError:
            raise ValueError(f"term {raw!r}: the weight after = must be a number") from None
        if not math.isfinite(w) or w == 0:
            raise ValueError(f"term {raw!r}: the weight must be a finite non-zero number, got {w}")
        terms.append(TermSpec(parse_judge(judge), w))
    if not terms:
        raise ValueError(f"objective {text!r} has no term; e.g. clip:openai/clip-vit-large-patch14=1")
    if not any(not t.is_constraint for t in terms):
        raise ValueError(f"objective {text!r} has only constraints; give at least one weighted term")
    if any(t.judge.kind == "checker" for t in terms):
        raise ValueError("the checker has no gradient and is ground truth: use it in --eval-judges, not in an "
                         "objective")
    return ObjectiveSpec(tuple(terms))


def resolve_source(source: str) -> str:
    """``world:NAME`` -> the bundled shapes-world folder; anything else as given."""
    if source.startswith("world:"):
        from dpo_diff.world.paths import world_data_dir

        name = source.split(":", 1)[1]
        folder = world_data_dir() / name
        if not folder.is_dir():
            have = sorted(p.name for p in world_data_dir().iterdir() if p.name in WORLD_JUDGES)
            raise ValueError(f"the shapes world has no model {name!r}; it has {', '.join(have)}")
        return str(folder)
    return source


def display_source(source: str) -> str:
    """The inverse of :func:`resolve_source` for names in records: a shapes-world folder as ``world:NAME`` (records
    must not carry this machine's install path)."""
    from dpo_diff.world.paths import world_data_dir

    try:
        rel = Path(source).resolve().relative_to(world_data_dir().resolve())
    except (ValueError, OSError):
        return source
    return f"world:{rel.as_posix()}" if len(rel.parts) == 1 else source


_MODEL_KINDS = {"clip": "CLIP judge", "siglip": "SigLIP judge", "vqa": "VQA judge"}  # their names in messages


def check_judge_sources(specs: Iterable[JudgeSpec | str], role: str = "judge") -> None:
    """Refuse a judge whose weights are not where its spec says, without loading them: a clip, siglip or vqa
    source (or an aesthetic judge's ``clip=`` backbone) must be a model folder with ``config.json`` or a hub id that
    can be had (:func:`dpo_diff.loading.resolve_model`), an aesthetic predictor's weights an existing file. Called
    before anything is written to an output folder: loading would find the same only after it was prepared.

    Raises :class:`~dpo_diff.loading.ModelNotFoundError` whose one-line message starts with ``role`` and the spec
    (``"evaluation judge 'clip:/no/such': CLIP judge folder '/no/such' does not exist; check the path"``).
    """
    from dpo_diff.loading import ModelNotFoundError, resolve_model

    checked: set[tuple[str, str]] = set()

    def model(source: str, kind: str) -> None:
        if (source, kind) not in checked:
            resolve_model(resolve_source(source), kind, "config.json")
            checked.add((source, kind))

    for spec in specs:
        spec = parse_judge(spec) if isinstance(spec, str) else spec
        try:
            if spec.kind in _MODEL_KINDS:
                model(spec.source, _MODEL_KINDS[spec.kind])
            elif spec.kind == "aesthetic":
                weights = Path(resolve_source(spec.source))  # as the predictor's loader reads it
                if not weights.is_file():
                    what = "is a folder" if weights.is_dir() else "does not exist"
                    raise ModelNotFoundError(f"the aesthetic predictor's weights file {str(weights)!r} {what}; give "
                                             f"the predictor's .pth or .safetensors file")
                model(spec.option_dict.get("clip", DEFAULT_AESTHETIC_BACKBONE), "CLIP backbone")
        except (ModelNotFoundError, ValueError) as e:  # ValueError: a world:NAME the shapes world lacks
            raise ModelNotFoundError(f"{role} {str(spec)!r}: {e}") from e


def source_fingerprints(specs: list[JudgeSpec]) -> list[str]:
    """Specs with local files replaced by content fingerprints (bench keys must change when weights do)."""
    from dpo_diff.loading import model_fingerprint

    out = []
    for s in specs:
        src = resolve_source(s.source) if s.source else ""
        opts = {k: (model_fingerprint(v) if k == "clip" and Path(v).exists() else v) for k, v in s.options}
        out.append(f"{s.kind}:{model_fingerprint(src) if src else ''}:{sorted(opts.items())}")
    return out


class JudgeRegistry:
    """Loads judges once per (spec, device): an objective and its evaluators share loaded models (an aesthetic
    predictor and a CLIP term on the same backbone share one CLIP model)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._loaded: dict[tuple[str, str], Any] = {}

    def load(self, spec: JudgeSpec | str) -> Any:
        spec = parse_judge(spec) if isinstance(spec, str) else spec
        key = (str(spec), self.device)
        if key not in self._loaded:
            self._loaded[key] = self._build(spec)
        return self._loaded[key]

    def _build(self, spec: JudgeSpec) -> Any:
        opts = spec.option_dict
        ckpt = opts.get("checkpointing", "0").lower() in ("1", "true", "yes")
        if spec.kind == "clip":
            from dpo_diff.judges.clip import ClipJudge

            judge = ClipJudge.from_pretrained(resolve_source(spec.source), device=self.device, checkpointing=ckpt)
        elif spec.kind == "siglip":
            from dpo_diff.judges.siglip import SiglipJudge

            judge = SiglipJudge.from_pretrained(resolve_source(spec.source), device=self.device, checkpointing=ckpt)
        elif spec.kind == "aesthetic":
            from dpo_diff.judges.aesthetic import AestheticJudge

            backbone_spec = JudgeSpec("clip", opts.get("clip", DEFAULT_AESTHETIC_BACKBONE),
                                      (("checkpointing", "1"),) if ckpt else ())
            judge = AestheticJudge.from_file(resolve_source(spec.source), self.load(backbone_spec))
        elif spec.kind == "vqa":
            import torch

            from dpo_diff.judges.vqa import VqaJudge

            # default: bf16 on CUDA (LLaVA-7B: 14 GB of weights instead of 28; the loss is taken in fp32 from the
            # logits), fp32 elsewhere (CPU bf16 matmuls are slow)
            default = "bf16" if str(self.device or "cpu").startswith("cuda") else "fp32"
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[opts.get("dtype", default)]
            judge = VqaJudge.from_pretrained(resolve_source(spec.source), device=self.device, dtype=dtype,
                                             checkpointing=ckpt)
        else:
            from dpo_diff.judges.checker import CheckerJudge

            judge = CheckerJudge.load(device=self.device)
        judge.name = str(spec)
        return judge


_SHARED: dict[str, JudgeRegistry] = {}


def shared_registry(device: str | None = "cpu") -> JudgeRegistry:
    """One registry per device for the process: runs and bench jobs reuse judges loaded by earlier ones."""
    key = str(device or "cpu")
    if key not in _SHARED:
        _SHARED[key] = JudgeRegistry(key)
    return _SHARED[key]
