"""The OpenRLHF reward server, started with `rbr serve` in a subprocess on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from runtime import Scorer

REPO = Path(__file__).resolve().parents[1]
MAX_ITEMS = 16
MAX_BODY_BYTES = 20_000
TYPES = ["Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `rbr serve` and wait until /health returns 200; returns the process and base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "rbr.cli", "serve", str(bundle), "--port", str(port),
        "--max-items", str(MAX_ITEMS), "--max-body-bytes", str(MAX_BODY_BYTES), "--threads", "2", *extra,
    ]
    log = log_path.open("w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rbr serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"rbr serve did not answer /health within 60 s:\n{log_path.read_text()}")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    process, url = start_server(tiny_bundle, log_path)
    yield url, log_path
    stop_server(process)


def conversation_pool() -> list[tuple[str, str, str]]:
    """(prompt, reply, response type) triples of varied lengths."""
    pool = []
    for i in range(40):
        prompt = f"question {i}: " + "explain this " * (i % 4)
        reply = "Here is an answer. " * (1 + i % 3) + f"Item {i}."
        pool.append((prompt, reply, TYPES[i % 4]))
    return pool


def request_body(items: list[tuple[str, str, str]]) -> dict:
    return {
        "query": [prompt + reply for prompt, reply, _ in items],
        "prompts": [prompt for prompt, _, _ in items],
        "labels": [rt for _, _, rt in items],
    }


def test_health_reports_bundle(server):
    url, _ = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok"
    assert health["variant"] == "fp32"
    assert len(health["propositions"]) == 23


def test_concurrent_clients_match_in_process_scorer(server, tiny_bundle: Path):
    url, _ = server
    pool = conversation_pool()
    expected = Scorer(tiny_bundle).score([(p, r) for p, r, _ in pool], response_types=[t for _, _, t in pool])

    def client(worker: int) -> list[tuple[list[int], dict]]:
        answers = []
        with httpx.Client(base_url=url, timeout=60) as http:
            for j in range(20):
                indices = [(worker * 7 + j * 3 + k) % len(pool) for k in range(1 + (worker + j) % 2)]
                response = http.post("/get_reward", json=request_body([pool[i] for i in indices]))
                answers.append((indices, response.status_code, response.json()))
        return answers

    before = httpx.get(f"{url}/health").json()
    with ThreadPoolExecutor(max_workers=32) as threads:
        results = [a for answers in threads.map(client, range(32)) for a in answers]
    after = httpx.get(f"{url}/health").json()

    assert len(results) == 32 * 20
    assert [status for _, status, _ in results].count(200) == len(results)
    assert after["requests"] - before["requests"] == 640
    # concurrent requests share micro-batches
    assert after["micro_batches"] - before["micro_batches"] < 640
    for indices, _, body in results:
        np.testing.assert_allclose(body["rewards"], expected.reward[indices], atol=1e-5)
        np.testing.assert_allclose(body["scores"], expected.class_probs[indices, 0], atol=1e-5)
        np.testing.assert_allclose(body["extra_logs"]["p_yes/apology"], expected.p_yes[indices, 12], atol=1e-5)


def test_empty_lists_are_valid(server):
    url, _ = server
    body = httpx.post(f"{url}/get_reward", json={"query": [], "prompts": [], "labels": []}).json()
    assert body["rewards"] == []
    assert body["scores"] == []
    assert body["extra_logs"]["p_yes/apology"] == []


def test_empty_reply_is_scored(server):
    url, _ = server
    body = httpx.post(f"{url}/get_reward", json={"query": ["hello"], "prompts": ["hello"], "labels": ["Comply"]}).json()
    assert len(body["rewards"]) == 1


def test_prompt_inside_query_is_stripped(server, tiny_bundle: Path):
    url, _ = server
    prompt, reply = "what is bread?", "Bread is baked dough."
    expected = Scorer(tiny_bundle).score([(prompt, reply)], response_types=["Comply"]).reward
    body = httpx.post(
        f"{url}/get_reward", json={"query": ["<pad><pad>" + prompt + reply], "prompts": [prompt], "labels": ["Comply"]}
    ).json()
    np.testing.assert_allclose(body["rewards"], expected, atol=1e-5)


@pytest.mark.parametrize(
    "content, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'{"query": "a", "prompts": ["a"]}', 422, "'query' must be a list"),
        (b'{"prompts": ["a"]}', 422, "missing field 'query'"),
        (b'{"query": ["ab"]}', 422, "missing field 'prompts'"),
        (b'{"query": [3], "prompts": ["a"], "labels": ["Comply"]}', 422, "query[0] must be a string"),
        (b'{"query": ["ab"], "prompts": ["a", "b"], "labels": ["Comply"]}', 422, "'prompts' has 2 items"),
        (b'{"query": ["ab"], "prompts": [7], "labels": ["Comply"]}', 422, "prompts[0] must be a string"),
        (b'{"query": ["ab"], "prompts": ["a"], "labels": [5]}', 422, "labels[0] must be a response type"),
        (b'{"query": ["ab"], "prompts": ["a"], "labels": ["Sometimes"]}', 422, "unknown response type"),
        (b'{"query": ["ab"], "prompts": ["a"]}', 422, "no response type"),
        (b'{"query": ["xyz"], "prompts": ["a"], "labels": ["Comply"]}', 422, "does not contain prompts[0]"),
        (b'{"query": ["ab"], "prompts": [[{"role": "user", "content": 1}]], "labels": ["Comply"]}', 422, "must be a string"),
    ],
)
def test_bad_body_gets_json_error(server, content: bytes, status: int, message: str):
    url, _ = server
    response = httpx.post(f"{url}/get_reward", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_too_many_items_rejected(server):
    url, _ = server
    items = [("p", "r", "Comply")] * (MAX_ITEMS + 1)
    response = httpx.post(f"{url}/get_reward", json=request_body(items))
    assert response.status_code == 413
    assert f"limit of {MAX_ITEMS}" in response.json()["error"]


def test_too_large_body_rejected(server):
    url, _ = server
    response = httpx.post(f"{url}/get_reward", json=request_body([("p", "r" * MAX_BODY_BYTES, "Comply")]))
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]


def test_too_large_chunked_body_rejected(server):
    url, _ = server

    def chunks():
        for _ in range(50):
            yield b" " * 1000

    response = httpx.post(f"{url}/get_reward", content=chunks())
    assert response.status_code == 413


def test_server_keeps_serving_after_bad_requests(server):
    url, _ = server
    for _ in range(3):
        httpx.post(f"{url}/get_reward", content=b"garbage")
    response = httpx.post(f"{url}/get_reward", json=request_body(conversation_pool()[:2]))
    assert response.status_code == 200
    assert len(response.json()["rewards"]) == 2


def test_server_logs_start_and_rejections(server):
    url, log_path = server
    httpx.post(f"{url}/get_reward", content=b"not json at all")
    text = log_path.read_text()
    assert "reward server started on http://127.0.0.1:" in text
    assert "rejected request" in text
    assert "400 request body is not valid JSON" in text


def test_server_default_response_type_and_stop_log(tiny_bundle: Path, tmp_path: Path):
    log_path = tmp_path / "server.log"
    process, url = start_server(tiny_bundle, log_path, "--default-response-type", "Comply", "--remove-text", "</s>")
    try:
        expected = Scorer(tiny_bundle).score([("q?", "an answer")], response_types=["Comply"]).reward
        body = httpx.post(f"{url}/get_reward", json={"query": ["q?an answer</s>"], "prompts": ["q?"]}).json()
        np.testing.assert_allclose(body["rewards"], expected, atol=1e-5)
    finally:
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (exit status -15)
        assert stop_server(process) in (0, -signal.SIGTERM)
    assert "reward server stopped after 1 requests (0 rejected" in log_path.read_text()
