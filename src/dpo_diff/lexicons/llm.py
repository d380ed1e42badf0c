"""LLM lexicon: the paper's substitutes from any OpenAI-compatible chat-completions endpoint.

As in DPO-Diff, one request per prompt and relation asks for 5 substitutes (synonym space) or 5 opposites (antonym
space) for each word, one line per word in the form ``word -> a, b, c``. Works with OpenAI, vLLM, llama.cpp's
server, Ollama, LM Studio, ... (``base_url``), the key read from an environment variable.

Robustness (the reference code crashes or silently loses prompts here):

* Parsing accepts numbering, bullets, quotes, bold markers, casing, ``:``/``→``/``=>`` arrows; multi-word answers,
  and words that are not in the prompt, are dropped by :class:`~dpo_diff.lexicons.base.Lexicon`.
* Transport errors, timeouts, 429 and 5xx are retried with exponential backoff (``Retry-After`` honoured), and so
  are *degenerate* answers (nothing parseable, or mostly one option per word: the reference's validity rule).
  Authentication and unknown-model errors fail at once with a message saying what to check.
* Good answers are cached on disk keyed by endpoint, model and request, so rerunning a build costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dpo_diff.lexicons.base import Lexicon, LexiconError, Relation, normalize_option
from dpo_diff.space import WordSpan

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
_LINE_PREFIX = re.compile(r"^\s*(?:[-*•·]+|\d+[.)]|\(\d+\))?\s*")


def parse_answer(text: str) -> dict[str, list[str]]:
    """Parse ``word -> a, b, c`` lines (tolerating list markup); later lines for the same word extend it."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = _LINE_PREFIX.sub("", raw.replace("**", "").replace("__", "")).strip()
        parts = _ARROW.split(line, maxsplit=1)
        if len(parts) != 2 or not parts[1].strip():
            continue
        word = normalize_option(parts[0]).lower()
        opts = [o.strip() for o in re.split(r"[,;/|]", parts[1]) if o.strip()]
        if word and opts:
            out.setdefault(word, []).extend(opts)
    return out


def is_degenerate(parsed: Mapping[str, Sequence[str]]) -> bool:
    """Nothing usable, or most words got a single option (the model ignored the format or the count)."""
    if not parsed:
        return True
    single = sum(1 for v in parsed.values() if len(v) <= 1)
    return single / len(parsed) > 0.4


class LLMLexicon(Lexicon):
    """Substitutes from an OpenAI-compatible chat-completions endpoint (the paper used GPT-4).

    Args:
        model: model name on the endpoint (e.g. ``gpt-4o``, ``llama3.1``).
        base_url: endpoint (``None``: the ``openai`` client default, i.e. ``OPENAI_BASE_URL`` or OpenAI).
        api_key_env: environment variable holding the key; local servers usually accept any key.
        cache_dir: response cache folder (``None``: ``$XDG_CACHE_HOME/dpo-diff/llm``; ``False``: no cache).
        max_attempts: requests per prompt and relation before giving up (errors and degenerate answers).
        timeout: seconds per request.
        backoff: first wait in seconds; doubles per attempt, capped at 60 s.
        n: substitutes requested per word (the paper asks for 5).
        temperature: sampling temperature (0 for reproducible spaces).
        sleep: injectable sleep function (tests).
    """

    name = "llm"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 cache_dir: str | os.PathLike[str] | None | bool = None, max_attempts: int = 5,
                 timeout: float = 60.0, backoff: float = 2.0, n: int = 5, temperature: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep, **kwargs: Any):
        kwargs.setdefault("max_options", n)
        super().__init__(**kwargs)
        if not model:
            raise LexiconError("the LLM lexicon needs a model name (--llm-model), e.g. gpt-4o or llama3.1")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.model = model
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
            # max_retries=0: retries are ours, so degenerate answers and errors share one budget and backoff.
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

    def ask(self, prompt: str, relation: Relation) -> dict[str, list[str]]:
        """Raw parsed answer for one prompt, from the cache or the endpoint (with retries)."""
        import openai

        messages = self.messages(prompt, relation)
        cache = self._cache_path(messages)
        if cache is not None and cache.is_file():
            return parse_answer(json.loads(cache.read_text(encoding="utf-8"))["answer"])
        last = "no attempt made"
        for attempt in range(self.max_attempts):
            wait = min(self.backoff * 2**attempt, 60.0)
            try:
                self.requests_made += 1
                resp = self._get_client().chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature)
                text = (resp.choices[0].message.content or "") if resp.choices else ""
                parsed = parse_answer(text)
                if not is_degenerate(parsed):
                    if cache is not None:
                        from dpo_diff.space import atomic_write_text

                        atomic_write_text(cache, json.dumps({"model": self.model, "endpoint": self.endpoint,
                                                             "messages": messages, "answer": text}))
                    return parsed
                last = f"unusable answer {text[:120]!r}"
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
            except (openai.APIConnectionError, openai.APIResponseValidationError) as e:  # incl. timeouts
                last = f"{type(e).__name__}: {e}"
            except (AttributeError, IndexError, TypeError, ValueError) as e:  # body that is not a completion
                last = f"malformed response ({type(e).__name__}: {e})"
            if attempt + 1 < self.max_attempts:
                self.sleep(wait)
        raise LexiconError(
            f"the LLM endpoint {self.endpoint} (model {self.model!r}) gave no usable {relation} answer for "
            f"{prompt!r} after {self.max_attempts} attempts; last problem: {last}; {self._hint()}")

    def _propose(self, prompt: str, words: list[WordSpan], relation: Relation) -> Mapping[str, Sequence[str]]:
        return self.ask(prompt, relation)
