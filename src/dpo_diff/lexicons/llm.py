"""LLM lexicon: the paper's substitutes from any OpenAI-compatible chat-completions endpoint.

As in DPO-Diff, one request per prompt and relation asks for 5 substitutes (synonym space) or 5 opposites (antonym
space) for each word, one line per word in the form ``word -> a, b, c``. Works with OpenAI, vLLM, llama.cpp's
server, Ollama, LM Studio, ... (``base_url``), the key read from an environment variable.

Robustness (the reference code crashes or silently loses prompts here):

* Parsing (:func:`parse_answer`) accepts ``word -> a, b`` lines with numbering, bullets, quotes, bold markers,
  casing, ``:``/``→``/``=>`` arrows, and JSON objects (raw, fenced or cut off) as ``word -> substitutes`` maps; a
  word's substitutes are never given to another word. Fillers (``etc``), single letters and markup are dropped;
  multi-word answers and words that are not in the prompt are dropped by :class:`~dpo_diff.lexicons.base.Lexicon`.
* Transport errors, timeouts, 429 and 5xx are retried with exponential backoff (``Retry-After`` honoured), and so
  are *unusable* answers (no usable substitute for any word of the prompt; the reason is kept for the error). A
  partial answer is kept, with a warning naming the words it left out. Authentication and unknown-model errors
  fail at once with a message saying what to check.
* Good answers are cached on disk keyed by endpoint, model and request, so rerunning a build costs nothing; a
  corrupt cache file is discarded with a warning naming it, and the endpoint is asked again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dpo_diff.files import FileWarning
from dpo_diff.lexicons.base import _OPTION_OK, STOP_WORDS, Lexicon, LexiconError, Relation, normalize_option
from dpo_diff.space import WordSpan, prompt_words

_INSTRUCTIONS = {
    "synonym": (
        "For each word in the text below, give {n} substitute words that do not change the meaning of the text. "
        "Use single words. Answer with one line per word, in the form: word -> substitute1, substitute2, ... "
        "Skip words such as 'a' and 'the' that have no useful substitutes. Do not add any other text."
    ),
    "antonym": (
        "For each word in the text below, give {n} words of opposite meaning (antonyms). Use single words. "
        "Answer with one line per word, in the form: word -> opposite1, opposite2, ... "
        "Skip words that have no opposite. Do not add any other text."
    ),
}
_ARROW = re.compile(r"\s*(?:->|→|=>|—>|–>|:)\s*")
_LINE_PREFIX = re.compile(r"^\s*(?:[-*•·>]+|\d+[.)]|\(\d+\))?\s*")
_SEPARATORS = re.compile(r"[,;/|]")
_LAST_ITEM = re.compile(r"^(.*)[,;/|]([^,;/|]*)$", re.S)  # "a, b, car" -> ("a, b", " car")
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|\Z)", re.S | re.I)
_TAG = re.compile(r"</?[A-Za-z][^<>\n]*>")
# Fillers an LLM appends to a list ("automobile, vehicle, etc."), and answers that mean "nothing here".
FILLERS = frozenset({"etc", "etcetera", "et cetera", "and so on", "so on", "and more", "and others", "e.g", "eg",
                     "i.e", "ie", "ex", "misc"})
_NOTHING = frozenset({"none", "n/a", "na", "nothing", "no antonym", "no antonyms", "no synonym", "no synonyms",
                      "no opposite", "no opposites", "no substitute", "no substitutes", "not applicable", "-"})
_WORD_KEYS = ("word", "term", "original", "token", "key", "source")
_OPTION_KEYS = ("substitutes", "synonyms", "antonyms", "opposites", "options", "alternatives", "words", "values")


def clean_answer_options(values: Any) -> list[str]:
    """The usable substitutes of one word's raw answer: split ``a, b; c``, cleaned by
    :func:`~dpo_diff.lexicons.base.normalize_option`; fillers (``etc``), single characters and anything that is not
    a word or a few words (markup, sentences with punctuation) are dropped; repeats are dropped."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        return []
    items = [part for v in values if isinstance(v, str) for part in _SEPARATORS.split(v)]
    if len(items) == 1 and normalize_option(items[0]).lower() in _NOTHING:
        return []
    out: list[str] = []
    for raw in items:
        opt = re.sub(r"^(?:and|or)\s+", "", normalize_option(raw), flags=re.I)
        if len(opt) < 2 or opt.lower() in FILLERS or not _OPTION_OK.match(opt) or opt in out:
            continue
        out.append(opt)
    return out


def _add(out: dict[str, list[str]], key: Any, values: Any) -> None:
    word = normalize_option(key).lower() if isinstance(key, str) else ""
    opts = clean_answer_options(values) if word and _OPTION_OK.match(word) else []
    if opts:
        merged = out.setdefault(word, [])
        merged.extend(o for o in opts if o not in merged)


def _from_json(obj: Any, out: dict[str, list[str]], depth: int = 0) -> None:
    """Collect ``word -> options`` from a decoded JSON answer: ``{word: [..]}``, ``{word: "a, b"}``, a wrapper
    object (``{"synonyms": {...}}``), ``[{"word": w, "synonyms": [..]}]`` or a list of ``"word -> a, b"`` lines."""
    if depth > 4:
        return
    if isinstance(obj, dict):
        inner = next(iter(obj.values()), None)
        if len(obj) == 1 and (isinstance(inner, list) and not all(isinstance(v, str) for v in inner)
                              or isinstance(inner, dict) and not set(inner) <= set(_OPTION_KEYS)):
            _from_json(inner, out, depth + 1)  # a wrapper such as {"answer": {...}} or {"words": [{...}]}
            return
        word_key = next((k for k in _WORD_KEYS if isinstance(obj.get(k), str)), None)
        option_key = next((k for k in _OPTION_KEYS if isinstance(obj.get(k), (list, str))), None)
        if word_key is not None:  # {"word": "red", "synonyms": [...]} (cut-off ones have no options yet)
            if option_key is not None:
                _add(out, obj[word_key], obj[option_key])
            return
        for k, v in obj.items():
            if isinstance(v, dict):  # {"red": {"synonyms": [...]}}
                v = next((x for key, x in v.items() if key in _OPTION_KEYS), None)
            _add(out, k, v)
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, str):
                _from_lines(item, out)
            else:
                _from_json(item, out, depth + 1)


def _from_lines(text: str, out: dict[str, list[str]]) -> None:
    """``word -> a, b`` lines; a line holding several pairs (``red: a, b, car: c``) is split at each arrow, the
    item before an arrow being the next word, so no word's substitutes are given to another."""
    for raw in text.splitlines():
        line = _LINE_PREFIX.sub("", raw.replace("**", "").replace("__", ""))
        line = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", line).strip()  # remarks may hold arrows ("(note: ...)")
        parts = _ARROW.split(line)
        if len(parts) < 2:
            continue
        key = parts[0]
        for i, part in enumerate(parts[1:], 1):
            if i == len(parts) - 1:
                _add(out, key, part)
                break
            m = _LAST_ITEM.match(part)
            if m is None:  # "red: crimson: dark": no way to tell where the next word starts
                break
            _add(out, key, m.group(1))
            key = m.group(2)


def parse_answer(text: str) -> dict[str, list[str]]:
    """Parse an LLM's answer into ``{word: [substitutes]}`` (words lowercase, substitutes cleaned).

    Accepts ``word -> a, b, c`` lines (numbering, bullets, bold, quotes, ``:``/``→``/``=>`` arrows) and JSON (raw,
    in a code fence, or cut off: every complete ``"word": [...]`` pair is kept). Fillers (``etc``), single
    letters and markup (``<script>``) never become substitutes; a word's substitutes are never given to another.
    """
    text = _TAG.sub(" ", _SCRIPT.sub(" ", str(text)))
    out: dict[str, list[str]] = {}
    blocks = _FENCE.findall(text) if "```" in text else []
    for block in blocks or [text]:
        _parse_block(block, out)
    if blocks and not out:  # fences around text that is not JSON, or answers beside an empty fence
        _parse_block(_FENCE.sub("\n", text), out)
    return out


def _parse_block(text: str, out: dict[str, list[str]]) -> None:
    stripped = text.lstrip()
    json_only = stripped.startswith("{") or re.match(r"\[\s*[{\"]", stripped) is not None
    start = text.find("{") if not json_only else len(text) - len(stripped)
    if start >= 0:
        value = _load_json(text[start:])
        if value is not None:
            before = len(out)
            _from_json(value, out)
            if json_only or len(out) > before:
                return
        elif json_only:
            return  # JSON too broken to read: its lines would mix words
    _from_lines(text, out)


def _load_json(text: str, max_chars: int = 50_000) -> Any:
    """The JSON value at the start of ``text``; when it is cut off or followed by chatter, the longest prefix
    that ends after a complete element, closed with the brackets still open (``None``: nothing readable)."""
    text = text[:max_chars]
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    # Scan once: at each comma or closing bracket outside strings, remember where a complete prefix ends and
    # which brackets are open there.
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            if len(stack) > 50:
                return None
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                break
            cuts.append((i + 1, "".join(reversed(stack))))
            if not stack:
                break  # the first value is complete; what follows is chatter
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    for end, closers in reversed(cuts[-200:]):
        try:
            return json.loads(text[:end] + closers)
        except (json.JSONDecodeError, RecursionError):
            continue
    return None


def check_llm_limits(timeout: float, attempts: int, deadline: float | None = None) -> None:
    """Refuse limits of LLM requests that cannot work (before anything runs), naming the command-line flag."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"--llm-timeout must be a positive number of seconds per request, got {timeout}")
    if attempts < 1:
        raise ValueError(f"--llm-attempts must be at least 1 (requests per answer), got {attempts}")
    if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
        raise ValueError(f"--llm-deadline must be a positive number of seconds (all requests together), got "
                         f"{deadline}")


OPENAI_HOST = "api.openai.com"


def check_api_key(endpoint: str, api_key_env: str) -> None:
    """OpenAI's own endpoint needs a key: its absence is said at once instead of after a failed request (local
    servers accept any key)."""
    if OPENAI_HOST in endpoint and not os.environ.get(api_key_env):
        raise LexiconError(f"the LLM endpoint {endpoint} needs an API key, but ${api_key_env} is not set; set it, "
                           f"name another variable with --llm-api-key-env, or point --llm-base-url at a local "
                           f"OpenAI-compatible server")


class LLMLexicon(Lexicon):
    """Substitutes from an OpenAI-compatible chat-completions endpoint (the paper used GPT-4).

    Args:
        model: model name on the endpoint (e.g. ``gpt-4o``, ``llama3.1``).
        base_url: endpoint (``None``: the ``openai`` client default, i.e. ``OPENAI_BASE_URL`` or OpenAI).
        api_key_env: environment variable holding the key; local servers usually accept any key.
        cache_dir: response cache folder (``None``: ``$XDG_CACHE_HOME/dpo-diff/llm``; ``False``: no cache).
        max_attempts: requests per prompt and relation before giving up (errors and unusable answers).
        timeout: seconds per request.
        deadline: seconds all requests of this object may take together (``None``: no limit beyond
            ``max_attempts x timeout`` per answer); past it the next answer fails naming the endpoint.
        backoff: first wait in seconds; doubles per attempt, capped at 60 s.
        n: substitutes requested per word (the paper asks for 5).
        temperature: sampling temperature (0 for reproducible spaces).
        sleep: injectable sleep function (tests).
    """

    name = "llm"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 cache_dir: str | os.PathLike[str] | None | bool = None, max_attempts: int = 5,
                 timeout: float = 60.0, backoff: float = 2.0, n: int = 5, temperature: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep, deadline: float | None = None, **kwargs: Any):
        kwargs.setdefault("max_options", n)
        super().__init__(**kwargs)
        if not model:
            raise LexiconError("the LLM lexicon needs a model name (--llm-model), e.g. gpt-4o or llama3.1")
        check_llm_limits(timeout, max_attempts, deadline)
        self.model = model
        self.deadline = deadline
        self._first_request: float | None = None  # monotonic time of the first request (the deadline's start)
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.n = n
        self.temperature = temperature
        self.sleep = sleep
        if cache_dir is None or cache_dir is True:
            root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            self.cache_dir: Path | None = root / "dpo-diff" / "llm"
        elif cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = Path(cache_dir)
        self._client: Any = None
        self.requests_made = 0  # HTTP requests actually sent (cache hits excluded); for tests and logs

    @property
    def endpoint(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model, "endpoint": self.endpoint, "n": self.n,
                "temperature": self.temperature}

    # ------------------------------------------------------------------ transport
    def _get_client(self) -> Any:
        if self._client is None:
            import openai

            # Local servers ignore the key but the client insists on one; a placeholder makes that explicit.
            key = os.environ.get(self.api_key_env) or "not-set"
            # max_retries=0: retries are ours, so unusable answers and errors share one budget and backoff.
            self._client = openai.OpenAI(base_url=self.endpoint, api_key=key, timeout=self.timeout, max_retries=0)
        return self._client

    def messages(self, prompt: str, relation: Relation) -> list[dict[str, str]]:
        return [{"role": "user", "content": _INSTRUCTIONS[relation].format(n=self.n) + "\n\nText: " + prompt}]

    def _cache_path(self, messages: list[dict[str, str]]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps([self.endpoint, self.model, self.temperature, messages], sort_keys=True)
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _hint(self) -> str:
        return (f"check that the server at {self.endpoint} is running and speaks the OpenAI chat-completions API "
                f"(--llm-base-url), that model {self.model!r} exists there (--llm-model), and that the key is in "
                f"${self.api_key_env} (--llm-api-key-env)")

    def _problem(self, prompt: str, words: list[WordSpan], parsed: Mapping[str, Sequence[str]]
                 ) -> tuple[str | None, list[str]]:
        """``(why the answer is unusable or None, words asked for that got no usable substitute)``."""
        matched = self._match(prompt_words(prompt), words, parsed)
        missing = list(dict.fromkeys(w.text for w in words if w.text not in matched))
        if matched:
            return None, missing
        if not parsed:
            return "no 'word -> substitutes' line or JSON object in it", missing
        asked = {w.text.lower() for w in words}
        named = [k for k in parsed if k in asked]
        if not named:
            return f"it names no word of the prompt (it names {sorted(parsed)[:5]})", missing
        return (f"its substitutes for {named[:5]} are all unusable (the word itself, several words, or fillers)",
                missing)

    def _warn_missing(self, prompt: str, relation: Relation, missing: list[str], origin: str) -> None:
        if missing:
            warnings.warn(f"the LLM {origin} gave no usable {'opposites' if relation == 'antonym' else 'substitutes'}"
                          f" for {', '.join(repr(w) for w in missing)} in {prompt!r}; kept the substitutes of the "
                          "other words", FileWarning, stacklevel=2)

    def _read_cache(self, cache: Path, prompt: str, words: list[WordSpan]
                    ) -> tuple[dict[str, list[str]] | None, list[str]]:
        """A cached answer, or ``None`` after discarding a corrupt or unusable cache file (with a warning)."""
        try:
            answer = json.loads(cache.read_text(encoding="utf-8")).get("answer")
            if not isinstance(answer, str):
                raise ValueError("it holds no answer text")
            parsed = parse_answer(answer)
            why, missing = self._problem(prompt, words, parsed)
            if why is None:
                return parsed, missing
            raise ValueError(f"its answer is unusable: {why}")
        except (OSError, ValueError, AttributeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            warnings.warn(f"discarded the corrupt LLM cache file {cache} ({str(e)[:160]}); asking the endpoint "
                          "again", FileWarning, stacklevel=2)
            try:
                cache.unlink()
            except OSError:
                pass
            return None, []

    def ask(self, prompt: str, relation: Relation, words: list[WordSpan] | None = None) -> dict[str, list[str]]:
        """Parsed answer for one prompt, from the cache or the endpoint (with retries).

        ``words`` are the words substitutes are wanted for (default: the prompt's words other than stop words). An
        answer is usable when it gives a usable substitute for at least one of them; the words it leaves out are
        named in a warning (:class:`~dpo_diff.files.FileWarning`). Unusable answers are retried; a corrupt cache file
        is discarded with a warning naming it, and the endpoint is asked again.
        """
        if words is None:
            words = [w for w in prompt_words(prompt) if not (self.skip_stopwords and w.text.lower() in STOP_WORDS)]
        messages = self.messages(prompt, relation)
        cache = self._cache_path(messages)
        if cache is not None and cache.is_file():
            parsed, missing = self._read_cache(cache, prompt, words)
            if parsed is not None:
                self._warn_missing(prompt, relation, missing, f"answer cached in {cache}")
                return parsed

        def check(text: str) -> tuple[dict[str, list[str]], str | None]:
            parsed = parse_answer(text)
            return parsed, self._problem(prompt, words, parsed)[0]

        text, parsed = self.complete(messages, check, f"{relation} answer for {prompt!r}")
        if cache is not None:
            from dpo_diff.space import atomic_write_text

            atomic_write_text(cache, json.dumps({"model": self.model, "endpoint": self.endpoint,
                                                 "messages": messages, "answer": text}))
        self._warn_missing(prompt, relation, self._problem(prompt, words, parsed)[1],
                           f"at {self.endpoint} (model {self.model!r})")
        return parsed

    def complete(self, messages: list[dict[str, str]], check: Callable[[str], tuple[Any, str | None]],
                 what: str) -> tuple[str, Any]:
        """Ask the endpoint until ``check(answer text)`` gives ``(result, None)``; ``(result, why)`` marks the
        answer unusable (retried like a transport error). Returns ``(text, result)``; raises
        :class:`~dpo_diff.lexicons.base.LexiconError` naming ``what`` and the last problem when attempts run out.
        Also the transport of LLM-driven searches (:mod:`dpo_diff.search.llm_search`)."""
        import openai

        check_api_key(self.endpoint, self.api_key_env)
        if self._first_request is None:
            self._first_request = time.monotonic()
        last, refused = "no attempt made", 0
        for attempt in range(self.max_attempts):
            wait = min(self.backoff * 2**attempt, 60.0)
            client = self._get_client()
            if self.deadline is not None:
                left = self.deadline - (time.monotonic() - self._first_request)
                if left <= 0:
                    raise LexiconError(f"the LLM endpoint {self.endpoint} (model {self.model!r}) gave no usable "
                                       f"{what} within the deadline of {self.deadline:g} s (--llm-deadline); last "
                                       f"problem: {last}; {self._hint()}")
                client = client.with_options(timeout=min(self.timeout, left))
            try:
                self.requests_made += 1
                resp = client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature)
                text = (resp.choices[0].message.content or "") if resp.choices else ""
                result, why = check(text)
                if why is None:
                    return text, result
                last = f"unusable answer ({why}): {text[:120]!r}"
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                    openai.BadRequestError) as e:
                # Retrying cannot fix a wrong key, model or URL path.
                raise LexiconError(f"the LLM endpoint {self.endpoint} refused the request ({e}); {self._hint()}"
                                   ) from e
            except openai.APIStatusError as e:  # 429, 5xx
                last = f"HTTP {e.status_code}: {str(e)[:120]}"
                retry_after = e.response.headers.get("retry-after") if e.response is not None else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(max(float(retry_after), wait), 60.0)
            except openai.APITimeoutError:
                last = f"no answer within {self.timeout:g} s (--llm-timeout)"
            except openai.APIConnectionError as e:  # refused, unknown host: one quick retry, then said at once
                refused += 1
                last = f"cannot connect ({e.__cause__ or e})"
                if refused >= 2:
                    raise LexiconError(f"cannot connect to the LLM endpoint {self.endpoint}: {e.__cause__ or e}; "
                                       f"{self._hint()}") from e
                wait = min(wait, 1.0)
            except openai.APIResponseValidationError as e:
                last = f"{type(e).__name__}: {e}"
            except (AttributeError, IndexError, TypeError, ValueError) as e:  # body that is not a completion
                last = f"malformed response ({type(e).__name__}: {e})"
            if attempt + 1 < self.max_attempts:
                self.sleep(wait)
        raise LexiconError(
            f"the LLM endpoint {self.endpoint} (model {self.model!r}) gave no usable {what} after "
            f"{self.max_attempts} attempts; last problem: {last}; {self._hint()}")

    def _propose(self, prompt: str, words: list[WordSpan], relation: Relation) -> Mapping[str, Sequence[str]]:
        return self.ask(prompt, relation, words)
