"""The results store of a study: `study.db` (SQLite) and weights as safetensors bundles.

Each result kind has its own table keyed by (task, config_hash); a task's result rows and
its row in `tasks` are written in one transaction, so after a crash a task is either
finished with all its rows or absent. Weights are written (atomically, content-addressed)
before that transaction, so a finished task's weights always exist.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from toroid.storage import has_bundle, read_bundle, write_bundle

# One table per result kind; every table also has `task` and `config_hash` first. Values
# that are curves or matrices are JSON text.
TABLES: dict[str, tuple[str, ...]] = {
    "networks": (
        "network",
        "block",
        "optimizer",
        "seed",
        "epochs",
        "reached_zero_train_error",
        "train_error",
        "train_loss",
        "test_error",
        "test_loss",
        "grad_evals",
        "wall_time",
        "weights",
    ),
    "canonical": ("network", "block", "weights"),
    "alignments": (
        "network",
        "block",
        "reference",
        "similarity_before",
        "similarity_after",
        "weights",
    ),
    "local_energy": (
        "network",
        "block",
        "split",
        "noise",
        "sigma",
        "mean",
        "stderr",
        "base",
        "raw",
    ),
    "distances": ("a", "b", "block", "kind", "value", "aligned"),
    "profiles": (
        "a",
        "b",
        "block",
        "path",
        "ts",
        "train_error",
        "train_loss",
        "test_error",
        "test_loss",
        "barrier_train",
        "barrier_test",
        "max_train_error",
    ),
    "bends": ("a", "b", "block", "method", "kind", "epochs", "grad_evals", "wall_time", "weights"),
}
Row = Mapping[str, Any]


def _json(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


class Weights:
    """The weights of a study (safetensors bundles under `directory/weights`), safe to use
    from any number of processes: every write is atomic and content-addressed."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.weights_dir = self.directory / "weights"
        self.weights_dir.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, state: Mapping[str, torch.Tensor], meta: Row) -> str:
        """Write `state` under the stem derived from `name`; returns the stem."""
        stem = name.replace("/", "_")
        write_bundle(self.weights_dir, stem, dict(state), dict(meta))
        return stem

    def load(self, stem: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return read_bundle(self.weights_dir, stem)

    def has(self, stem: str) -> bool:
        return has_bundle(self.weights_dir, stem)


class Store:
    """Open (creating when needed) the store in `directory`. Only one process (the
    coordinator) writes the database."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.weights = Weights(self.directory)
        self.path = self.directory / "study.db"
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (task TEXT PRIMARY KEY, kind TEXT, "
            "config_hash TEXT, seconds REAL, finished_at REAL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        for table, columns in TABLES.items():
            cols = ", ".join(("task TEXT", "config_hash TEXT", *columns))
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {table}_task ON {table} (task)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Meta -----------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # Tasks ----------------------------------------------------------------------------
    def finished(self) -> dict[str, str]:
        """Finished tasks and the config hash each was run with."""
        return dict(self._db.execute("SELECT task, config_hash FROM tasks").fetchall())

    def task_rows(self) -> list[tuple[str, str, float]]:
        return self._db.execute("SELECT task, kind, seconds FROM tasks ORDER BY task").fetchall()

    def record(
        self,
        task: str,
        kind: str,
        config_hash: str,
        results: Mapping[str, Sequence[Row]],
        seconds: float,
    ) -> None:
        """Replace `task`'s rows in every table of `results` and mark it finished, in one
        transaction."""
        with self._transaction() as db:
            for table in TABLES:
                db.execute(f"DELETE FROM {table} WHERE task = ?", (task,))
            for table, rows in results.items():
                columns = TABLES[table]
                for row in rows:
                    unknown = set(row) - set(columns)
                    if unknown:
                        raise KeyError(f"table {table} has no column {sorted(unknown)}")
                    values = [task, config_hash, *(_json(row.get(c)) for c in columns)]
                    marks = ", ".join("?" * len(values))
                    db.execute(f"INSERT INTO {table} VALUES ({marks})", values)
            db.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?)",
                (task, kind, config_hash, seconds, time.time()),
            )

    def keep_only(self, current: Mapping[str, str]) -> list[str]:
        """Delete the results of every task that is not in `current` (task -> config hash)
        with that hash: results of an older config must not mix with this one's. Returns
        the deleted task keys."""
        stale = [k for k, h in self.finished().items() if current.get(k) != h]
        with self._transaction() as db:
            for key in stale:
                for table in TABLES:
                    db.execute(f"DELETE FROM {table} WHERE task = ?", (key,))
                db.execute("DELETE FROM tasks WHERE task = ?", (key,))
        return stale

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """Rows of `table` (matching `where`), JSON columns decoded, in insertion order."""
        columns = ("task", "config_hash", *TABLES[table])
        clause = " AND ".join(f"{k} = ?" for k in where)
        query = f"SELECT * FROM {table}" + (f" WHERE {clause}" if where else "") + " ORDER BY rowid"
        out = []
        for values in self._db.execute(query, tuple(where.values())):
            row = dict(zip(columns, values, strict=True))
            for k, v in row.items():
                if isinstance(v, str) and v[:1] in "[{":
                    row[k] = json.loads(v)
            out.append(row)
        return out
