"""A teacher behind one or more OpenAI-compatible servers (vLLM, SGLang, llama.cpp server, OpenAI).

Each item is one request with `max_tokens: 1` and `temperature: 0` that requests the
top logprobs of the first generated token:

- `api="chat"`: POST {url}/chat/completions with the grading prompt as the user
  message, `logprobs: true` and `top_logprobs: K`; the server applies the chat template.
- `api="completions"`: POST {url}/completions with the grading prompt as raw text and
  `logprobs: K`; no chat template is applied.

Yes and no spellings outside the top K get zero mass. Requests are spread over the
URLs by picking the one with the fewest requests in flight. HTTP 429, 5xx, invalid
JSON, timeouts and connection errors are retried with exponential backoff and
jitter; other 4xx responses and responses without logprobs fail at once. A failed
item becomes a `Grade` with an error, and the run goes on.

The prompt is sent whole: a server rejects one longer than its context, and that
item fails with the server's message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from distill.prompts import question_text, render_prompt
from distill.teacher import NO_VARIANTS, YES_VARIANTS, Grade, GradeRequest
from rbr.render import format_conversation

logger = logging.getLogger(__name__)

_RETRY_LOG_EVERY = 100  # after the first 10 retries, log one in this many
_DONE = object()


@dataclass(frozen=True)
class HttpTeacherConfig:
    """Settings of the teacher servers and of the client that calls them."""

    urls: tuple[str, ...]  # base URLs ending in /v1
    model: str  # model name sent in every request
    api: str = "chat"  # "chat" or "completions"
    concurrency: int = 16  # requests in flight over all URLs
    max_retries: int = 5  # retries per item after the first attempt
    timeout: float = 60.0  # seconds per request
    retry_delay: float = 1.0  # seconds before the first retry; doubles on each retry
    max_retry_delay: float = 60.0  # seconds, cap of one backoff wait
    top_logprobs: int = 20  # logprobs requested for the first token
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key


class PermanentFailure(Exception):
    """A response that retrying cannot fix."""


class HttpTeacher:
    """Grades through OpenAI-compatible HTTP endpoints with bounded concurrency."""

    def __init__(self, config: HttpTeacherConfig):
        if config.api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {config.api!r}")
        if not config.urls:
            raise ValueError("at least one URL is needed")
        self.config = config
        self.teacher_id = f"http-{config.api}:{config.model}"
        self.truncated_conversations = 0  # prompts are sent whole
        self.retries = 0
        self._urls = [url.rstrip("/") for url in config.urls]
        self._in_flight = [0] * len(self._urls)
        self._next_url = 0

    # ------------------------------------------------------------ public

    def grade(self, requests: Sequence[GradeRequest], template: str) -> Iterator[tuple[GradeRequest, Grade]]:
        """Yield (request, grade) pairs as responses arrive.

        The requests run on an event loop in a background thread, so the caller can
        store results while later requests are still in flight.
        """
        results: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                asyncio.run(self.grade_async(requests, template, lambda r, g: results.put((r, g))))
                results.put(_DONE)
            except BaseException as exc:  # handed to the consuming thread and raised there
                results.put(exc)

        thread = threading.Thread(target=run, name="http-teacher", daemon=True)
        thread.start()
        while True:
            item = results.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()

    async def grade_async(
        self,
        requests: Sequence[GradeRequest],
        template: str,
        on_result: Callable[[GradeRequest, Grade], None],
    ) -> None:
        """Grade all requests with `concurrency` workers; call `on_result` for each."""
        import httpx

        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.config.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=self.config.concurrency, max_keepalive_connections=self.config.concurrency)
        pending = iter(requests)

        async with httpx.AsyncClient(timeout=self.config.timeout, limits=limits, headers=headers) as client:

            async def worker() -> None:
                for request in pending:
                    prompt = render_prompt(
                        template,
                        question_text(request.proposition),
                        format_conversation(request.conversation.prompt),
                        request.conversation.completion,
                    )
                    grade = await self._grade_prompt(client, prompt, request)
                    on_result(request, grade)

            workers = max(1, min(self.config.concurrency, len(requests)))
            await asyncio.gather(*(worker() for _ in range(workers)))

    # ------------------------------------------------------------ one item

    def _request_body(self, prompt: str) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.config.model, "max_tokens": 1, "temperature": 0}
        if self.config.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            body["logprobs"] = True
            body["top_logprobs"] = self.config.top_logprobs
            return "/chat/completions", body
        body["prompt"] = prompt
        body["logprobs"] = self.config.top_logprobs
        return "/completions", body

    def _pick_url(self) -> int:
        """Index of the URL with the fewest requests in flight; ties rotate."""
        count = len(self._urls)
        order = [(self._next_url + i) % count for i in range(count)]
        index = min(order, key=lambda i: self._in_flight[i])
        self._next_url = (index + 1) % count
        return index

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `retry` (1-based): full jitter, or Retry-After."""
        ceiling = min(self.config.max_retry_delay, self.config.retry_delay * 2 ** (retry - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_retry_delay))
        return delay

    async def _grade_prompt(self, client: Any, prompt: str, request: GradeRequest) -> Grade:
        import httpx

        path, body = self._request_body(prompt)
        last_error = ""
        retry_after: float | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._log_retry(request, attempt, last_error)
                await asyncio.sleep(self._backoff(attempt, retry_after))
                retry_after = None

            index = self._pick_url()
            url = self._urls[index] + path
            self._in_flight[index] += 1
            try:
                response = await client.post(url, json=body)
            except httpx.TimeoutException:
                last_error = f"request to {url} timed out after {self.config.timeout:g} s"
                continue
            except httpx.TransportError as exc:
                last_error = f"connection to {url} failed: {type(exc).__name__}: {exc}"
                continue
            finally:
                self._in_flight[index] -= 1

            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"{url} returned HTTP {response.status_code}: {_snippet(response.text)}"
                retry_after = _retry_after_seconds(response.headers.get("retry-after"))
                continue
            if response.status_code >= 400:
                return Grade(None, None, f"{url} returned HTTP {response.status_code}: {_snippet(response.text)}")
            try:
                data = response.json()
            except ValueError:
                last_error = f"{url} returned invalid JSON: {_snippet(response.text)}"
                continue
            try:
                top = _first_token_logprobs(data, self.config.api)
            except PermanentFailure as exc:
                return Grade(None, None, f"{url}: {exc}")
            return _grade_from_top_logprobs(top)

        return Grade(None, None, f"failed after {self.config.max_retries + 1} attempts; last error: {last_error}")

    def _log_retry(self, request: GradeRequest, attempt: int, error: str) -> None:
        self.retries += 1
        if self.retries <= 10 or self.retries % _RETRY_LOG_EVERY == 0:
            logger.warning(
                "retry %d of %d for conversation %s, proposition %s (%d retries so far): %s",
                attempt, self.config.max_retries, request.conversation.id, request.proposition.name,
                self.retries, error,
            )


# ---------------------------------------------------------------- response parsing


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the exponential backoff applies instead
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


_NO_LOGPROBS = (
    "the response has no top logprobs for the first token; the teacher needs a server and "
    "model that return logprobs (the request asks for them)"
)


def _first_token_logprobs(data: Any, api: str) -> dict[str, float]:
    """Map token text to logprob for the first generated token, from either response format."""
    try:
        logprobs = data["choices"][0]["logprobs"]
    except (KeyError, IndexError, TypeError):
        raise PermanentFailure(_NO_LOGPROBS) from None
    if not isinstance(logprobs, dict):
        raise PermanentFailure(_NO_LOGPROBS)

    if api == "chat":
        content = logprobs.get("content")
        if not isinstance(content, list) or not content or not isinstance(content[0], dict):
            raise PermanentFailure(_NO_LOGPROBS)
        entries = content[0].get("top_logprobs")
        if not isinstance(entries, list) or not entries:
            raise PermanentFailure(_NO_LOGPROBS)
        top: dict[str, float] = {}
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("token"), str):
                top.setdefault(entry["token"], float(entry["logprob"]))
        return top

    entries = logprobs.get("top_logprobs")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict) or not entries[0]:
        raise PermanentFailure(_NO_LOGPROBS)
    return {str(token): float(value) for token, value in entries[0].items()}


def _normalise_token(token: str) -> str:
    """Map the byte-level (Ġ) and SentencePiece (▁) space markers to a space."""
    if token[:1] in ("Ġ", "▁"):
        return " " + token[1:]
    return token


def _grade_from_top_logprobs(top: dict[str, float]) -> Grade:
    p_yes = p_no = 0.0
    for token, logprob in top.items():
        text = _normalise_token(token)
        if text in YES_VARIANTS:
            p_yes += math.exp(logprob)
        elif text in NO_VARIANTS:
            p_no += math.exp(logprob)
    return Grade.from_masses(p_yes, p_no)
