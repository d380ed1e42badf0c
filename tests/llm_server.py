"""A real chat-completions HTTP server on 127.0.0.1 for LLM-lexicon tests (scripted answers, errors, delays)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedServer:
    """Each POST pops the next action; when the script is empty, ``default`` is used.

    Actions: ``("text", content)``, ``("status", code)``, ``("sleep", seconds, content)``, ``("raw", body)``.
    """

    def __init__(self) -> None:
        self.script: list[tuple[Any, ...]] = []
        self.default: tuple[Any, ...] = ("text", "")
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.url = ""

    def next_action(self, body: dict[str, Any]) -> tuple[Any, ...]:
        with self.lock:
            self.requests.append(body)
            return self.script.pop(0) if self.script else self.default


def _completion(content: str, model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


@contextmanager
def serve() -> Iterator[ScriptedServer]:
    state = ScriptedServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            action = state.next_action(body)
            model = body.get("model", "")
            if action[0] == "text":
                self._send(200, _completion(action[1], model))
            elif action[0] == "status":
                msg = json.dumps({"error": {"message": f"scripted {action[1]}", "type": "test"}}).encode()
                self._send(action[1], msg, {"Retry-After": "0"} if action[1] == 429 else None)
            elif action[0] == "sleep":
                time.sleep(action[1])
                self._send(200, _completion(action[2], model))
            elif action[0] == "raw":
                self._send(200, action[1].encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
