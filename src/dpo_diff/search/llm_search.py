"""LLM-proposer search (OPT2I-style: Mañas et al. 2024, "Improving Text-to-Image Consistency via Automatic Prompt
Optimization"): each round an OpenAI-compatible chat model sees the user prompt, the task, the space and the scored
history, and proposes new candidates *in the space* (one option number per slot).

Budget: exactly the other searches' accounting (:class:`~dpo_diff.search.base.Evaluator`): every proposal is scored
by full generations on the search seeds; requests to the LLM cost nothing in full-generation equivalents. The first
evaluation is the user prompt itself (the baseline the model is shown).

Answers are never silently dropped. A proposal is repaired where its intent is unambiguous (an option's text instead
of its number, a digit string, any letter case or quotes) and refused otherwise, with the reason (the wrong number of
slots, an option number out of range, text that is no option of its slot); proposals already scored are counted as
repeats. When a round's answer yields fewer new candidates than asked, the model is asked again in the same
conversation, told what was wrong, up to ``reasks`` times; what is still missing is filled with distinct random
candidates (as random search draws them). Every refusal, repair, repeat and fill is recorded per round in
``extra["llm"]`` of the result. Transport errors are retried by the LLM lexicon's client (backoff, ``Retry-After``),
and answers are cached on disk by request, so a rerun of the same search with the same scores asks nothing.

How good the proposals are cannot be measured offline (no LLM is reachable from the test machines); the tests check
the protocol against a scripted local server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpo_diff.search.base import BudgetExhausted, Evaluator, SearchResult, finish
from dpo_diff.search.evolution import distinct_random
from dpo_diff.seeding import rng as make_rng

_TASKS = {
    "improve": ("find choices whose images follow the user's prompt more faithfully than the user's prompt does. "
                "Negative-prompt terms name what the image should not show."),
    "attack": ("find a rewrite that keeps the meaning of the user's prompt but whose images follow it less "
               "faithfully (a red-team test of the image model)."),
}
_LIST_KEYS = ("candidates", "proposals", "choices", "answers")
_ROW_KEYS = ("choices", "candidate", "options", "slots", "choice")
_NONE = frozenset({"", "none", "no term", "(none)", "nothing", "-"})


@dataclass
class LLMSearchConfig:
    """Settings of the LLM-proposer search.

    Args:
        model: the model's name on the endpoint (required), e.g. ``gpt-4o`` or ``llama3.1``.
        base_url: an OpenAI-compatible endpoint (``None``: ``OPENAI_BASE_URL`` or OpenAI's).
        api_key_env: the environment variable holding the key (local servers accept any).
        per_round: candidates asked for per round (all valid new proposals are scored).
        history: best scored candidates shown each round (the user prompt is always shown).
        reasks: follow-up turns per round after answers with too few valid new candidates.
        temperature: sampling temperature of the proposals.
        max_attempts, timeout: transport retries and seconds per request (the lexicon client's).
        deadline: seconds all requests of one search may take together (``None``: no total limit).
        cache_dir: answer cache (``None``: the LLM lexicon's default folder; ``""``: no cache).
    """

    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    per_round: int = 4
    history: int = 12
    reasks: int = 2
    temperature: float = 0.7
    max_attempts: int = 5
    timeout: float = 60.0
    cache_dir: str | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        for name, low in (("per_round", 1), ("history", 1), ("reasks", 0), ("max_attempts", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"llm search: {name} must be >= {low}, got {getattr(self, name)}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"llm search: temperature must be in [0, 2], got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def llm_search(problem, evaluator: Evaluator, config: LLMSearchConfig | None = None, *, seed: int = 0,
               sleep: Callable[[float], None] = time.sleep) -> SearchResult:
    cfg = config or LLMSearchConfig()
    if not cfg.model:
        raise ValueError("the llm search needs a chat model: --llm-model NAME (and --llm-base-url URL for a local "
                         "OpenAI-compatible server)")
    chat = _client(cfg, sleep)
    rng = make_rng(seed, "llm")
    log: dict[str, Any] = {"model": cfg.model, "endpoint": chat.endpoint, "rounds": []}
    barren = 0  # consecutive rounds whose every candidate the meaning constraint refused (they cost nothing)
    try:
        evaluator.evaluate([problem.space.default], source="llm-user")  # the baseline the model is shown
        # no request for a round the budget (or the time budget, or a cancel) cannot pay for
        while barren < 20 and evaluator.can_afford(evaluator.evaluation_cost):
            proposed, filled, record = propose_round(problem, evaluator, chat, cfg, rng, len(log["rounds"]))
            log["rounds"].append(record)
            if not proposed and not filled:
                break  # every candidate has been tried
            n = len(evaluator.evaluations)
            evaluator.evaluate(proposed, source="llm")
            evaluator.evaluate(filled, source="llm-fill")
            barren = barren + 1 if len(evaluator.evaluations) == n else 0
    except BudgetExhausted:
        pass
    log["requests"] = chat.requests_made
    return finish("llm", evaluator, {"llm": log})


def _client(cfg: LLMSearchConfig, sleep: Callable[[float], None]):
    """The LLM lexicon's OpenAI client: its retries, backoff and error messages (its parsing is not used)."""
    from dpo_diff.lexicons.llm import LLMLexicon

    return LLMLexicon(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                      cache_dir=False if cfg.cache_dir == "" else cfg.cache_dir, max_attempts=cfg.max_attempts,
                      timeout=cfg.timeout, temperature=cfg.temperature, sleep=sleep, deadline=cfg.deadline)


def propose_round(problem, evaluator: Evaluator, chat, cfg: LLMSearchConfig, rng, index: int
                  ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], dict[str, Any]]:
    """One round: ``(new valid proposals, random fills, the round's record)``."""
    space = problem.space
    messages = [{"role": "system", "content": describe_task(problem)},
                {"role": "user", "content": request(problem, evaluator, cfg.history, cfg.per_round)}]
    record: dict[str, Any] = {"round": index, "answers": 0, "proposals": 0, "new": 0, "repeated": 0,
                              "invalid": [], "repaired": [], "filled": 0}
    seen = set(evaluator.evaluations) | set(evaluator.rejected)
    new: list[tuple[int, ...]] = []
    for turn in range(cfg.reasks + 1):
        text = ask(chat, messages)
        record["answers"] += 1
        raws, why = parse_proposals(text)
        problems = [why] if why else []
        for raw in raws:
            record["proposals"] += 1
            cand, note = read_candidate(raw, space)
            if cand is None:
                record["invalid"].append({"answer": turn, "proposal": _short(raw), "reason": note})
                problems.append(f"{_short(raw)}: {note}")
            elif cand in seen or cand in new:
                record["repeated"] += 1
                problems.append(f"{list(cand)} was already scored or proposed")
            else:
                new.append(cand)
                if note:
                    record["repaired"].append({"answer": turn, "proposal": _short(raw), "as": list(cand),
                                               "how": note})
        if len(new) >= cfg.per_round or turn == cfg.reasks:
            break
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": reask(problems, cfg.per_round - len(new), len(space.slots))}]
    record["new"] = len(new)
    fill = distinct_random(space.sizes, cfg.per_round - len(new), rng, exclude=seen | set(new)) \
        if len(new) < cfg.per_round else []
    record["filled"] = len(fill)
    return new, fill, record


def ask(chat, messages: list[dict[str, str]]) -> str:
    """The model's answer to ``messages``: from the cache, or from the endpoint (then cached)."""
    cache = chat._cache_path(messages)
    if cache is not None and cache.is_file():
        try:
            answer = json.loads(cache.read_text(encoding="utf-8")).get("answer")
            if isinstance(answer, str):
                return answer
        except (OSError, ValueError, AttributeError):
            pass  # a corrupt cache file: ask again and overwrite it
    text, _ = chat.complete(messages, lambda t: (t, None), "candidate proposals")
    if cache is not None:
        from dpo_diff.space import atomic_write_text

        atomic_write_text(Path(cache), json.dumps({"model": chat.model, "endpoint": chat.endpoint,
                                                   "messages": messages, "answer": text}))
    return text


# ---------------------------------------------------------------- what the model is told
def describe_task(problem) -> str:
    space = problem.space
    lines = [f"You choose words for the prompt of a text-to-image model. Task ({problem.task.name}): "
             f"{_TASKS[problem.task.name]}", f"User prompt: {json.dumps(space.prompt)}"]
    if space.negative_prompt:
        lines.append(f"User negative prompt: {json.dumps(space.negative_prompt)}")
    lines.append("A candidate is a list with one option number per slot, in slot order; option 0 keeps the user's "
                 "prompt as it is. The slots:")
    for i, slot in enumerate(space.slots):
        what = f"the word {json.dumps(slot.word)}" if slot.target == "positive" else "a negative-prompt term"
        options = ", ".join(f"{j} {json.dumps(o) if o else '(none)'}" for j, o in enumerate(slot.options))
        lines.append(f"slot {i + 1}, {what}: {options}")
    return "\n".join(lines)


def request(problem, evaluator: Evaluator, history: int, n: int) -> str:
    scored = sorted(evaluator.evaluations.values(), key=lambda e: e.objective)
    user = tuple(problem.space.default)
    shown = scored[:history] + [e for e in scored[history:] if e.candidate == user]
    lines = ["Scored so far (lower score is better), best first:"]
    for e in shown:
        who = " (the user's prompt)" if e.candidate == user else ""
        lines.append(f"{list(e.candidate)} score {e.objective:.4f}{who}: prompt {json.dumps(e.prompt)}, negative "
                     f"prompt {json.dumps(e.negative_prompt)}")
    if len(scored) > len(shown):
        lines.append(f"({len(scored) - len(shown)} worse candidates not shown)")
    if evaluator.rejected:
        bad = [list(c) for c in list(evaluator.rejected)[:10]]
        lines.append(f"Not allowed (they change the prompt's meaning): {bad}")
    lines.append(f"Propose {n} new candidates, not among those above, that you expect to score lower. Answer with "
                 f'JSON only, in the form {{"candidates": [[...], ...]}}, each candidate a list of '
                 f"{len(problem.space.slots)} option numbers.")
    return "\n".join(lines)


def reask(problems: list[str], missing: int, n_slots: int) -> str:
    listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    return (f"Some of that could not be used: {listed or 'no candidate was given'}. Propose {missing} more new "
            f'candidates, each a list of {n_slots} option numbers, as JSON only: {{"candidates": [[...], ...]}}.')


# ---------------------------------------------------------------- reading answers
def parse_proposals(text: str) -> tuple[list[Any], str | None]:
    """The raw proposals of an answer (JSON, fenced or with chatter around it, or cut off), and why there are none."""
    from dpo_diff.lexicons.llm import _load_json

    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    data = _load_json(text[start:]) if start >= 0 else None
    if isinstance(data, dict):
        data = next((data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)),
                    next((v for v in data.values() if isinstance(v, list)), None))
    if not isinstance(data, list):
        return [], f"the answer holds no JSON list of candidates ({text[:80]!r})"
    if data and all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in data):
        data = [data]  # one bare candidate
    return data, None if data else "the answer's candidate list is empty"


def read_candidate(raw: Any, space) -> tuple[tuple[int, ...] | None, str]:
    """``(candidate, how it was repaired or "")``, or ``(None, why it is refused)``."""
    if isinstance(raw, dict):
        raw = next((raw[k] for k in _ROW_KEYS if isinstance(raw.get(k), list)), raw)
    if isinstance(raw, dict):
        return None, "an object without a list of option numbers"
    if not isinstance(raw, list):
        return None, f"not a list of option numbers but a {type(raw).__name__}"
    if len(raw) != len(space.slots):
        return None, f"{len(raw)} choices for {len(space.slots)} slots"
    out, notes = [], []
    for i, (entry, slot) in enumerate(zip(raw, space.slots)):
        idx, note = _read_choice(entry, slot.options)
        if idx is None:
            return None, f"slot {i + 1}: {note}"
        out.append(idx)
        if note:
            notes.append(f"slot {i + 1}: {note}")
    return tuple(out), "; ".join(notes)


def _read_choice(entry: Any, options: tuple[str, ...]) -> tuple[int | None, str]:
    n = len(options)
    if isinstance(entry, bool) or not isinstance(entry, (int, float, str)):
        return None, f"{entry!r} is not an option number 0-{n - 1}"
    if isinstance(entry, float):
        if not entry.is_integer():
            return None, f"{entry!r} is not an option number 0-{n - 1}"
        entry = int(entry)
    if isinstance(entry, int):
        return (entry, "") if 0 <= entry < n else (None, f"option {entry} is out of range 0-{n - 1}")
    text = entry.strip().strip("\"'").strip()
    if re.fullmatch(r"\d+", text):
        idx = int(text)
        return (idx, f"read {entry!r} as {idx}") if idx < n else (None, f"option {idx} is out of range 0-{n - 1}")
    folded = [o.casefold() for o in options]
    key = "" if text.casefold() in _NONE and options[0] == "" else text.casefold()
    if key in folded:
        return folded.index(key), f"read the option text {entry!r} as {folded.index(key)}"
    return None, f"{entry!r} is neither an option number 0-{n - 1} nor one of the slot's options"


def _short(raw: Any) -> str:
    return json.dumps(raw, ensure_ascii=False, default=str)[:120]
