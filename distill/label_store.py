"""The label store: teacher outputs in SQLite, keyed so that no item is graded twice.

A store is a directory holding `labels.sqlite` (WAL journal). One row per key

    (teacher id, proposition, prompt hash, conversation id)

stores P(yes), the yes/no mass, an error (NULL for a valid label) and the time it was
written. The prompt hash covers the template and the proposition's question and
examples, but not the conversation, so editing one question makes only that
proposition's labels stale. Writers commit after every batch; a process killed
with SIGKILL loses at most the batch in progress.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from distill.prompts import prompt_hash
from rbr.errors import RbrError
from rbr.spec import Spec

STORE_FILE = "labels.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    teacher TEXT NOT NULL,
    proposition TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    p_yes REAL,
    mass REAL,
    error TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (teacher, proposition, prompt_hash, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# A valid label is never replaced; a failed one is replaced by the next attempt.
_UPSERT = """
INSERT INTO labels (teacher, proposition, prompt_hash, conversation_id, p_yes, mass, error, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (teacher, proposition, prompt_hash, conversation_id) DO UPDATE SET
    p_yes = excluded.p_yes, mass = excluded.mass, error = excluded.error, created_at = excluded.created_at
WHERE labels.error IS NOT NULL
"""


class LabelStore:
    """Teacher labels in a directory; `create=False` raises if the store does not exist."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        file = self.path / STORE_FILE
        if not file.exists():
            if not create:
                raise RbrError(f"label store {self.path} not found (no {STORE_FILE}); run `rbr label --store {self.path}` first.")
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(file), timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._db.commit()
        except sqlite3.Error as exc:
            raise RbrError(f"cannot open label store {file}: {exc}") from exc
        version = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if int(version) != SCHEMA_VERSION:
            raise RbrError(f"label store {file} has schema version {version}; this version of rbr reads {SCHEMA_VERSION}.")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def put_many(self, teacher: str, rows: Iterable[tuple[str, str, str, float | None, float | None, str | None]]) -> None:
        """Write (proposition, prompt hash, conversation id, P(yes), mass, error) rows and commit."""
        now = time.time()
        with self._db:
            self._db.executemany(_UPSERT, [(teacher, *row, now) for row in rows])

    # ------------------------------------------------------------ reading

    def teachers(self) -> list[str]:
        """Teacher ids that have at least one row in the store, sorted."""
        return [row[0] for row in self._db.execute("SELECT DISTINCT teacher FROM labels ORDER BY teacher")]

    def resolve_teacher(self, teacher: str | None) -> str:
        """Return the given teacher id if stored, or the only teacher when `teacher` is None."""
        known = self.teachers()
        if teacher is None:
            if len(known) == 1:
                return known[0]
            if not known:
                raise RbrError(f"label store {self.path} has no labels yet; run `rbr label` first.")
            raise RbrError(f"label store {self.path} contains labels of several teachers ({', '.join(known)}); choose one with --teacher.")
        if teacher not in known:
            raise RbrError(f"label store {self.path} has no labels of teacher {teacher!r}; it has: {', '.join(known) or 'none'}.")
        return teacher

    def labeled_keys(self, teacher: str, hashes: dict[str, str]) -> set[tuple[str, str]]:
        """(proposition, conversation id) pairs with a valid label under the given prompt hashes."""
        done: set[tuple[str, str]] = set()
        for proposition, digest in hashes.items():
            cursor = self._db.execute(
                "SELECT conversation_id FROM labels WHERE teacher = ? AND proposition = ? "
                "AND prompt_hash = ? AND error IS NULL",
                (teacher, proposition, digest),
            )
            done.update((proposition, row[0]) for row in cursor)
        return done

    def targets(self, spec: Spec, conversation_ids: Sequence[str], teacher: str | None = None) -> np.ndarray:
        """P(yes) as float32 (N, K) in `spec.proposition_names` order; NaN where no valid label exists.

        A label counts only if it was made with the current prompt hash of its
        proposition, so labels made before a question was edited are ignored.
        """
        teacher = self.resolve_teacher(teacher)
        row_of = {conversation_id: i for i, conversation_id in enumerate(conversation_ids)}
        targets = np.full((len(conversation_ids), len(spec.simple)), np.nan, dtype=np.float32)  # (N, K)
        for column, proposition in enumerate(spec.simple):
            cursor = self._db.execute(
                "SELECT conversation_id, p_yes FROM labels WHERE teacher = ? AND proposition = ? "
                "AND prompt_hash = ? AND error IS NULL",
                (teacher, proposition.name, prompt_hash(spec, proposition)),
            )
            for conversation_id, p_yes in cursor:
                row = row_of.get(conversation_id)
                if row is not None:
                    targets[row, column] = p_yes
        # a conversation id listed twice gets its label in every row
        if len(row_of) != len(conversation_ids):
            for i, conversation_id in enumerate(conversation_ids):
                targets[i] = targets[row_of[conversation_id]]
        return targets

    def rows(self, teacher: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield every stored row as a dict, optionally of one teacher only."""
        query = "SELECT teacher, proposition, prompt_hash, conversation_id, p_yes, mass, error, created_at FROM labels"
        params: tuple = ()
        if teacher is not None:
            query += " WHERE teacher = ?"
            params = (teacher,)
        query += " ORDER BY teacher, conversation_id, proposition"
        names = ("teacher", "proposition", "prompt_hash", "conversation_id", "p_yes", "mass", "error", "created_at")
        for row in self._db.execute(query, params):
            yield dict(zip(names, row))

    def export_jsonl(self, out: str | Path, teacher: str | None = None) -> int:
        """Write every row (valid and failed) as one JSON object per line; return the row count."""
        count = 0
        with Path(out).open("w", encoding="utf-8") as handle:
            for row in self.rows(teacher):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return count
