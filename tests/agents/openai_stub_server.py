"""A real OpenAI-compatible chat-completions server on 127.0.0.1, scripted for tests.

`StubServer(script)` serves ``POST /v1/chat/completions`` from a background thread. `script`
maps the request number (0, 1, ...) and the parsed JSON body to a behaviour:

- ``Reply(text)``: a 200 response whose message content is `text`;
- ``Status(code)``: an error response with that HTTP status;
- ``Slow(seconds, then)``: wait, then behave as `then` (a client with a shorter timeout gives up);
- ``Garbage()``: a 200 response whose body is not JSON.

`answer_tagged(body, rng)` answers like a well-behaved model: it finds the option labels and the
tags the prompt asks for and replies ``<prediction>X</prediction><action>Y</action>``.
The server records every request (body and Authorization header) and stops on `close()`, on
leaving its `with` block, or by itself after `lifetime_s`, so a failing test never leaves it up.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str


@dataclass
class Status:
    code: int
    message: str = "scripted error"


@dataclass
class Slow:
    seconds: float
    then: Any = None  # a behaviour; None = a tagged valid answer


@dataclass
class Garbage:
    pass


Behaviour = Reply | Status | Slow | Garbage | None  # None: a valid tagged answer
Script = Callable[[int, dict[str, Any]], Behaviour]


def prompt_labels(body: dict[str, Any]) -> list[str]:
    """The option labels listed in the game rules of the first user message."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    found = re.search(r"at the same time,\s*from: (.*?)\.\n", user)
    if not found:
        raise ValueError("no option list in the prompt")
    return [x.strip() for x in found.group(1).split(",")]


def answer_tagged(body: dict[str, Any], rng: random.Random) -> str:
    """A valid answer with a random label for every tag the last user message asks for."""
    labels = prompt_labels(body)
    last = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    tags = [t for t in ("prediction", "action") if f"<{t}>" in last]
    return "".join(f"<{t}>{rng.choice(labels)}</{t}>" for t in tags)


class StubServer:
    """The server; `url` is the base URL to give the client (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, script: Script | None = None, seed: int = 0, lifetime_s: float = 120.0):
        self.script: Script = script or (lambda n, body: None)
        self.rng = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    behaviour = server.script(n, body)
                    fallback_text = answer_tagged(body, server.rng)
                while isinstance(behaviour, Slow):
                    if server._stop.wait(behaviour.seconds):
                        return
                    behaviour = behaviour.then
                if isinstance(behaviour, Status):
                    return self._send(behaviour.code, {"error": {"message": behaviour.message}})
                if isinstance(behaviour, Garbage):
                    return self._send_raw(200, b"<html>not json")
                text = behaviour.text if isinstance(behaviour, Reply) else fallback_text
                self._send(
                    200,
                    {
                        "id": f"stub-{n}",
                        "object": "chat.completion",
                        "model": body.get("model", "stub"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    },
                )

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                self._send_raw(code, json.dumps(payload).encode())

            def _send_raw(self, code: int, data: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
