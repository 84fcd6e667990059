"""The label store: keys, stale prompts, teacher choice, export, and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distill.label_store import STORE_FILE, LabelStore
from distill.prompts import prompt_hash
from rbr.errors import RbrError
from rbr.spec import load_spec
from tests.fake_openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
SPEC = load_spec(None)


def hash_of(spec, name):
    return prompt_hash(spec, spec.proposition(name))


def test_store_targets_nan_where_unlabeled(tmp_path):
    with LabelStore(tmp_path / "store") as store:
        store.put_many("t", [("apology", hash_of(SPEC, "apology"), "a", 0.8, 0.9, None)])
        targets = store.targets(SPEC, ["a", "b"])
    column = SPEC.proposition_names.index("apology")
    assert targets.shape == (2, len(SPEC.simple))
    assert targets.dtype == np.float32
    assert targets[0, column] == pytest.approx(0.8)
    assert np.isnan(targets[1]).all()
    assert np.isnan(np.delete(targets[0], column)).all()


def test_store_targets_ignore_failed_labels(tmp_path):
    with LabelStore(tmp_path / "store") as store:
        store.put_many("t", [("apology", hash_of(SPEC, "apology"), "a", None, None, "timed out")])
        targets = store.targets(SPEC, ["a"])
    assert np.isnan(targets).all()


def test_store_edited_question_stales_one_proposition(tmp_path):
    rows = [(name, hash_of(SPEC, name), "a", 0.25, 1.0, None) for name in ("apology", "judgement")]
    edited = replace(SPEC.proposition("apology"), question="Does the reply say sorry?")
    edited_spec = replace(SPEC, simple=tuple(edited if p.name == "apology" else p for p in SPEC.simple))
    with LabelStore(tmp_path / "store") as store:
        store.put_many("t", rows)
        targets = store.targets(edited_spec, ["a"])
    assert np.isnan(targets[0, SPEC.proposition_names.index("apology")])
    assert targets[0, SPEC.proposition_names.index("judgement")] == pytest.approx(0.25)


def test_store_failed_label_replaced_valid_kept(tmp_path):
    digest = hash_of(SPEC, "apology")
    with LabelStore(tmp_path / "store") as store:
        store.put_many("t", [("apology", digest, "a", None, None, "HTTP 500"), ("apology", digest, "b", 0.1, 1.0, None)])
        store.put_many("t", [("apology", digest, "a", 0.7, 1.0, None), ("apology", digest, "b", 0.9, 1.0, None)])
        rows = {r["conversation_id"]: r for r in store.rows()}
    assert rows["a"]["p_yes"] == pytest.approx(0.7)
    assert rows["a"]["error"] is None
    assert rows["b"]["p_yes"] == pytest.approx(0.1)


def test_store_teacher_choice(tmp_path):
    digest = hash_of(SPEC, "apology")
    with LabelStore(tmp_path / "store") as store:
        store.put_many("local:x", [("apology", digest, "a", 0.2, 1.0, None)])
        assert store.targets(SPEC, ["a"]).shape == (1, len(SPEC.simple))
        store.put_many("http-chat:y", [("apology", digest, "a", 0.6, 1.0, None)])
        assert store.teachers() == ["http-chat:y", "local:x"]
        with pytest.raises(RbrError, match="several teachers .*http-chat:y, local:x"):
            store.targets(SPEC, ["a"])
        column = SPEC.proposition_names.index("apology")
        assert store.targets(SPEC, ["a"], teacher="http-chat:y")[0, column] == pytest.approx(0.6)
        with pytest.raises(RbrError, match="no labels of teacher 'z'"):
            store.targets(SPEC, ["a"], teacher="z")


def test_store_missing_directory_raises_when_not_creating(tmp_path):
    with pytest.raises(RbrError, match="not found"):
        LabelStore(tmp_path / "absent", create=False)


def test_store_uses_wal_journal(tmp_path):
    LabelStore(tmp_path / "store").close()
    with sqlite3.connect(tmp_path / "store" / STORE_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_label_export_writes_every_row(tmp_path):
    from rbr.cli import main

    digest = hash_of(SPEC, "apology")
    with LabelStore(tmp_path / "store") as store:
        store.put_many("t", [("apology", digest, "a", 0.3, 0.8, None), ("apology", digest, "b", None, None, "HTTP 500")])
    out = tmp_path / "labels.jsonl"
    assert main(["label-export", "--store", str(tmp_path / "store"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["conversation_id"] for r in rows] == ["a", "b"]
    assert rows[0]["p_yes"] == pytest.approx(0.3)
    assert rows[0]["prompt_hash"] == digest
    assert rows[1]["error"] == "HTTP 500"


def stored_keys(store_dir):
    if not (store_dir / STORE_FILE).exists():
        return []
    try:
        with sqlite3.connect(store_dir / STORE_FILE) as db:
            return db.execute("SELECT conversation_id, proposition, error FROM labels").fetchall()
    except sqlite3.OperationalError:  # the writer has created the file but not the table yet
        return []


def test_label_resumes_after_sigkill(tmp_path):
    rows, propositions = 40, ("apology", "judgement", "third_person")
    data, store = tmp_path / "rows.jsonl", tmp_path / "store"
    with data.open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": f"r{i}", "prompt": f"question {i}", "completion": f"reply {i}"}) + "\n")
    total = rows * len(propositions)

    with FakeOpenAIServer(delay=0.05) as server:
        command = [
            sys.executable, "-m", "rbr.cli", "label", "--data", str(data), "--teacher", server.url,
            "--model", "fake", "--store", str(store), "--propositions", ",".join(propositions),
            "--concurrency", "2", "--batch-size", "4", "--no-progress",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}

        # kill the first run once some labels are committed, well before the end
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(stored_keys(store)) < 8:
                time.sleep(0.05)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        stored_before = len(stored_keys(store))

        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert first.returncode == -signal.SIGKILL
    assert 8 <= stored_before < total
    assert second.returncode == 0, second.stderr
    keys = stored_keys(store)
    assert len(keys) == total
    assert len({(c, p) for c, p, _ in keys}) == total
    assert all(error is None for _, _, error in keys)
    match = re.search(r"(\d+) skipped \(already labeled\), (\d+) graded", second.stdout)
    assert match, second.stdout
    skipped, graded = int(match.group(1)), int(match.group(2))
    assert skipped >= stored_before
    assert skipped + graded == total


def test_eval_teacher_prints_table(tmp_path, capsys):
    from distill.teacher_eval import in_tuning_half
    from rbr.cli import main

    data, store = tmp_path / "gold.jsonl", tmp_path / "store"
    ids = [f"g{i}" for i in range(40)]
    rows = []
    with data.open("w") as handle:
        for i, conversation_id in enumerate(ids):
            human = i % 2 == 0
            labels = {"apology": human, "judgement": False}
            handle.write(json.dumps({"id": conversation_id, "prompt": "hi", "completion": "ok", "propositions": labels}) + "\n")
            rows.append(("apology", hash_of(SPEC, "apology"), conversation_id, 0.8 if human else 0.3, 1.0, None))
            rows.append(("judgement", hash_of(SPEC, "judgement"), conversation_id, 0.4, 1.0, None))
    with LabelStore(store) as labels:
        labels.put_many("t", rows)

    assert main(["eval-teacher", "--data", str(data), "--store", str(store)]) == 0
    output = capsys.readouterr().out
    evaluated = sum(not in_tuning_half(i) for i in ids)
    apology = next(line for line in output.splitlines() if line.startswith("| apology |"))
    judgement = next(line for line in output.splitlines() if line.startswith("| judgement |"))
    assert "40 of 40 conversations labeled" in output
    assert f"metrics on the other {evaluated}" in output
    assert "| 1.000 | 1.000 | 1.000 |" in apology
    assert "evaluation half has no positives" in judgement
    assert "| **macro mean** (1 propositions with both classes) | | | 1.000 | 1.000 | 1.000 | |" in output
