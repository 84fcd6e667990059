"""A small OpenAI-compatible server on 127.0.0.1 for teacher tests.

It serves /v1/chat/completions and /v1/completions with one token's top logprobs.
P(yes) of an item is a function of its prompt text (`expected_p_yes`), so a test
can check what the client stored. Markers in the prompt inject faults:

- FAULT:429        the first two attempts get HTTP 429 with Retry-After: 0
- FAULT:500        the first attempt gets HTTP 500
- FAULT:timeout    the first attempt sleeps past the client's timeout
- FAULT:badjson    the first attempt gets a 200 with a body that is not JSON
- FAULT:nologprobs every attempt gets a 200 without logprobs
- FAULT:always500  every attempt gets HTTP 500
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MASS = 0.9  # p_yes + p_no in every normal response
TIMEOUT_SLEEP = 2.0  # seconds a FAULT:timeout attempt sleeps


def expected_p_yes(prompt: str) -> float:
    """The P(yes) the server encodes for a prompt: between 0.1 and 0.9."""
    digest = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16)
    return 0.1 + 0.8 * (digest % 1000) / 1000


class FakeOpenAIServer:
    """Run with `with FakeOpenAIServer() as server:`; `server.url` ends in /v1."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay  # seconds added to every request
        self.attempts: Counter = Counter()  # prompt -> requests received
        self.paths: Counter = Counter()  # URL path -> requests received
        self.authorization: list[str] = []  # Authorization headers received
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if "messages" in body:
                    prompt = body["messages"][-1]["content"]
                else:
                    prompt = body["prompt"]
                with server._lock:
                    server.attempts[prompt] += 1
                    server.paths[self.path] += 1
                    server.authorization.append(self.headers.get("Authorization", ""))
                    attempt = server.attempts[prompt]
                if server.delay:
                    time.sleep(server.delay)
                self._answer(prompt, attempt, chat="messages" in body)

            def _send(self, status: int, payload: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _answer(self, prompt: str, attempt: int, chat: bool):
                if "FAULT:429" in prompt and attempt <= 2:
                    return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
                if ("FAULT:500" in prompt and attempt == 1) or "FAULT:always500" in prompt:
                    return self._send(500, b'{"error": "internal"}')
                if "FAULT:timeout" in prompt and attempt == 1:
                    time.sleep(TIMEOUT_SLEEP)
                    return self._send(200, b"{}")
                if "FAULT:badjson" in prompt and attempt == 1:
                    return self._send(200, b'{"choices": [')
                if "FAULT:nologprobs" in prompt:
                    choice = {"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "length"}
                    return self._send(200, json.dumps({"choices": [choice]}).encode())

                p_yes = expected_p_yes(prompt)
                top = {" yes": math.log(MASS * p_yes), "No": math.log(MASS * (1 - p_yes)), "maybe": math.log(1 - MASS)}
                if chat:
                    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]
                    first = {"token": " yes", "logprob": top[" yes"], "top_logprobs": entries}
                    choice = {"index": 0, "message": {"role": "assistant", "content": " yes"}, "logprobs": {"content": [first]}}
                else:
                    logprobs = {"tokens": [" yes"], "token_logprobs": [top[" yes"]], "top_logprobs": [top], "text_offset": [0]}
                    choice = {"index": 0, "text": " yes", "logprobs": logprobs}
                self._send(200, json.dumps({"object": "chat.completion" if chat else "text_completion", "choices": [choice]}).encode())

        return Handler
