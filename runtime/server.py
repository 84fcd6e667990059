"""An OpenRLHF-compatible remote reward model: `POST /get_reward` over FastAPI and uvicorn.

Request body (OpenRLHF's remote reward model protocol, `--remote_rm_url`):

    {"query": [...], "prompts": [...], "labels": [...]}

- `query[i]` is the prompt text followed by the response text. The server removes the
  text of `prompts[i]` up to its end to get the reply: `query` must start with
  `prompts[i]`, or contain it (the text after its last occurrence is the reply).
  When `prompts[i]` is a list of chat messages instead of a string, `query[i]` is the
  reply alone.
- `labels[i]` is the response type of the prompt ("Comply", "Hard Refuse", ...). A
  missing or empty label uses the server's `default_response_type`, or is rejected.
- Strings listed in `remove_texts` (end-of-sequence or padding tokens) are deleted
  from each reply before scoring.

Response: {"rewards": [...], "scores": [...], "extra_logs": {"p_yes/<proposition>": [...]}},
one value per item. `rewards` is the RBR, with no base reward. `scores` is the
probability of the spec's first completion class (ideal), in [0, 1], for OpenRLHF's
dynamic filtering. Empty lists are valid and return empty lists.

Concurrent requests are merged into one scorer call: the first waiting request opens
a micro-batch that collects others for up to `batch_delay_ms` or `max_batch_items`
conversations. Rejected requests get a 4xx JSON body {"error": "..."} and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rbr.errors import RbrError
from runtime.scorer import PreparedBatch, Scorer, ScoreResult

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServerSettings:
    """Limits and conventions of the reward server."""

    host: str = "127.0.0.1"  # loopback only unless set otherwise
    port: int = 8000
    max_body_bytes: int = 16 * 1024 * 1024  # larger request bodies get 413
    max_items: int = 1024  # conversations per request; more get 413
    batch_delay_ms: float = 5.0  # how long a micro-batch waits for other requests
    max_batch_items: int = 256  # conversations per micro-batch (one request may exceed it alone)
    default_response_type: str | None = None  # used for items without a label
    remove_texts: tuple[str, ...] = ()  # strings deleted from replies, such as "</s>"


class RequestRejected(Exception):
    """A request rejected with a 4xx status; the message is sent to the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class MicroBatcher:
    """Merges concurrent scoring requests into one scorer call per micro-batch."""

    def __init__(self, scorer: Scorer, delay_s: float, max_items: int):
        self.scorer = scorer
        self.delay_s = delay_s
        self.max_items = max_items
        self._queue: asyncio.Queue[tuple[PreparedBatch, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0  # micro-batches scored

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, prepared: PreparedBatch) -> dict[str, Any]:
        """Score one request's rows with whatever else arrives in time; returns its response body."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((prepared, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: tuple[PreparedBatch, asyncio.Future] | None = None
        while True:
            # collect requests until the delay passes or the batch is full
            first = carry if carry is not None else await self._queue.get()
            carry = None
            pending = [first]
            size = len(first[0])
            deadline = loop.time() + self.delay_s
            while size < self.max_items:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                if size + len(item[0]) > self.max_items:
                    carry = item
                    break
                pending.append(item)
                size += len(item[0])

            # score them in a worker thread, then hand each request its rows
            pending = [(p, f) for p, f in pending if not f.cancelled()]
            if not pending:
                continue
            try:
                result = await asyncio.to_thread(
                    self.scorer.score_prepared, PreparedBatch.concatenate([p for p, _ in pending])
                )
            except Exception as exc:  # noqa: BLE001 - every waiting request must get an answer
                logger.exception("scoring a micro-batch of %d conversations failed", size)
                for _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for prepared, future in pending:
                if not future.done():
                    future.set_result(_slice(result, start, start + len(prepared)))
                start += len(prepared)


def create_app(scorer: Scorer, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """Build the FastAPI app: POST /get_reward and GET /health."""
    batcher = MicroBatcher(scorer, settings.batch_delay_ms / 1000.0, settings.max_batch_items)
    counts = {"requests": 0, "rejected": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        logger.info(
            "reward server started on http://%s:%d: bundle %s, variant %s, provider %s, max %d bytes and "
            "%d conversations per request, micro-batch delay %.1f ms",
            settings.host, settings.port, scorer.manifest.path, scorer.variant, scorer.provider,
            settings.max_body_bytes, settings.max_items, settings.batch_delay_ms,
        )
        try:
            yield
        finally:
            await batcher.stop()
            logger.info(
                "reward server stopped after %d requests (%d rejected, %d micro-batches)",
                counts["requests"], counts["rejected"], batcher.batches,
            )

    app = FastAPI(title="rbr reward server", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "bundle": str(scorer.manifest.path),
            "variant": scorer.variant,
            "provider": scorer.provider,
            "propositions": list(scorer.proposition_names),
            "weights": "fitted" if scorer.weights_fitted else "class-order default",
            "requests": counts["requests"],
            "rejected": counts["rejected"],
            "micro_batches": batcher.batches,
        }

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        counts["requests"] += 1
        client = request.client.host if request.client else "unknown"
        try:
            body = await _read_body(request, settings.max_body_bytes)
            prepared = _parse_request(body, scorer, settings)
        except RequestRejected as exc:
            counts["rejected"] += 1
            logger.warning("rejected request %d from %s: %d %s", counts["requests"], client, exc.status, exc.message)
            return JSONResponse({"error": exc.message}, status_code=exc.status)

        if len(prepared) == 0:
            empty = {f"p_yes/{name}": [] for name in scorer.proposition_names}
            return JSONResponse({"rewards": [], "scores": [], "extra_logs": empty})
        try:
            return JSONResponse(await batcher.submit(prepared))
        except Exception as exc:  # noqa: BLE001 - the batcher has logged the traceback
            return JSONResponse({"error": f"scoring failed: {exc}"}, status_code=500)

    return app


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestRejected(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestRejected(413, f"request body exceeds the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_request(body: bytes, scorer: Scorer, settings: ServerSettings) -> PreparedBatch:
    """Validate a /get_reward body and build the scorer's inputs; raises RequestRejected."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRejected(400, f"request body is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise RequestRejected(422, f"request body must be a JSON object, got {type(data).__name__}.")

    queries = _list_field(data, "query", required=True)
    n = len(queries)
    if n > settings.max_items:
        raise RequestRejected(413, f"{n} items in one request exceeds the limit of {settings.max_items}; split the batch.")
    prompts = _list_field(data, "prompts", required=True, length=n)
    labels = _list_field(data, "labels", required=False, length=n)

    conversations = []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        if not isinstance(query, str):
            raise RequestRejected(422, f"query[{i}] must be a string, got {type(query).__name__}.")
        reply = _reply(query, prompt, i)
        for text in settings.remove_texts:
            reply = reply.replace(text, "")
        conversations.append({"prompt": prompt, "completion": reply})

    response_types = None
    if labels is not None:
        for i, label in enumerate(labels):
            if label is not None and not isinstance(label, str):
                raise RequestRejected(422, f"labels[{i}] must be a response type string, got {type(label).__name__}.")
        response_types = [label or None for label in labels]
    try:
        return scorer.prepare(conversations, response_types, default_response_type=settings.default_response_type)
    except RbrError as exc:
        raise RequestRejected(422, str(exc)) from None


def _list_field(data: dict, name: str, required: bool, length: int | None = None) -> list | None:
    value = data.get(name)
    if value is None:
        if required:
            raise RequestRejected(422, f"missing field {name!r}; expected a list.")
        return None
    if not isinstance(value, list):
        raise RequestRejected(422, f"field {name!r} must be a list, got {type(value).__name__}.")
    if length is not None and len(value) != length:
        raise RequestRejected(422, f"field {name!r} has {len(value)} items but 'query' has {length}.")
    return value


def _reply(query: str, prompt: Any, i: int) -> str:
    """Extract the reply from query[i]: the text after prompts[i], or all of it when the prompt is a message list."""
    if isinstance(prompt, list):
        return query
    if not isinstance(prompt, str):
        raise RequestRejected(422, f"prompts[{i}] must be a string or a list of chat messages, got {type(prompt).__name__}.")
    if query.startswith(prompt):
        return query[len(prompt):]
    at = query.rfind(prompt) if prompt else -1
    if at < 0:
        raise RequestRejected(
            422, f"query[{i}] does not contain prompts[{i}]; send the prompt text followed by the response."
        )
    return query[at + len(prompt):]


def _slice(result: ScoreResult, start: int, stop: int) -> dict[str, Any]:
    """Build the /get_reward response for rows start..stop of a micro-batch."""
    p_yes = result.p_yes[start:stop]  # (n, K)
    return {
        "rewards": result.reward[start:stop].tolist(),
        "scores": result.class_probs[start:stop, 0].tolist(),  # P(best class), ideal in the default spec
        "extra_logs": {f"p_yes/{name}": p_yes[:, k].tolist() for k, name in enumerate(result.proposition_names)},
    }


def serve(scorer: Scorer, settings: ServerSettings = ServerSettings(), access_log: bool = False) -> None:
    """Run the server until interrupted (SIGINT or SIGTERM)."""
    import uvicorn

    if settings.host not in LOOPBACK_HOSTS:
        logger.warning(
            "binding %s exposes the reward server beyond this machine; it has no authentication.", settings.host
        )
    uvicorn.run(
        create_app(scorer, settings), host=settings.host, port=settings.port,
        log_level="info", access_log=access_log, log_config=None,
    )
