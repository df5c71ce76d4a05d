"""The results store of a study: `study.db` (SQLite) and weights as safetensors bundles.

Each row type of `toroid.study.rows` has its own table with typed columns derived from the
dataclass (curves are JSON arrays, decoded because the field says so, never by guessing);
every table also carries the `task` and `hash` that wrote the row. A task's rows and its
entry in `tasks` (finished, or failed with its reason) are written in one transaction, so
after a crash a task is either recorded whole or absent. Weights are written (atomically,
content-addressed) before that transaction, so a finished task's weights always exist.

The database carries a schema version (`PRAGMA user_version`); a store of another version
is refused in one line that says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sqlite3
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

import toroid
from toroid.errors import ToroidError
from toroid.storage import read_bundle, write_bundle
from toroid.study.rows import TABLES, Row

SCHEMA_VERSION = 3
DB_FILE = "study.db"
R = TypeVar("R", bound=Row)

# Task keys are parts joined by "/"; a part holds letters, digits, "_", "." and "-".
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


class StoreError(ToroidError):
    """A study store that cannot be used as it is; the message says what to do."""


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise StoreError(
            f"task key {key!r} is not safe in a file name: its parts (separated by '/') may "
            "hold letters, digits, '_', '.' and '-', and start with a letter or digit"
        )
    return key


def stem_of(key: str) -> str:
    """The file stem of a task key: readable (its parts joined by `_`) and unique (a hash of
    the key follows, since `_` may occur inside a part too)."""
    digest = hashlib.sha256(check_key(key).encode()).hexdigest()[:8]
    return f"{key.replace('/', '_')}-{digest}"


# Typed columns -------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    kind: type  # float, int, bool, str, or tuple (a JSON array of floats)
    optional: bool

    @property
    def sql(self) -> str:
        base = {float: "REAL", int: "INTEGER", bool: "INTEGER", str: "TEXT", tuple: "TEXT"}
        # NaN is stored as NULL, so a float column is nullable even when its field is not.
        nullable = self.optional or self.kind is float
        return f"{self.name} {base[self.kind]}{'' if nullable else ' NOT NULL'}"

    def encode(self, value: Any) -> Any:
        if value is None:
            if not self.optional and self.kind is not float:
                raise StoreError(f"column {self.name} cannot be empty")
            return None
        if self.kind is tuple:
            return json.dumps([float(v) for v in value])
        if self.kind is float:
            number = float(value)
            # SQLite stores NaN as NULL; a non-optional float decodes NULL back to NaN.
            return None if math.isnan(number) else number
        if self.kind is bool:
            return int(bool(value))
        return self.kind(value)

    def decode(self, value: Any) -> Any:
        if value is None:
            return math.nan if self.kind is float and not self.optional else None
        if self.kind is tuple:
            return tuple(float(v) for v in json.loads(value))
        if self.kind is bool:
            return bool(value)
        return self.kind(value)


def _column(name: str, annotation: Any) -> Column:
    args = typing.get_args(annotation)
    optional = isinstance(annotation, types.UnionType) and type(None) in args
    if optional:
        (annotation,) = [a for a in args if a is not type(None)]
    kind = typing.get_origin(annotation) or annotation
    if kind not in (float, int, bool, str, tuple):
        raise TypeError(f"row field {name} has a type the store cannot hold: {annotation}")
    return Column(name, kind, optional)


def columns(row_type: type) -> tuple[Column, ...]:
    """The typed columns of a row type, in field order."""
    hints = typing.get_type_hints(row_type)
    return tuple(_column(f.name, hints[f.name]) for f in dataclasses.fields(row_type))


COLUMNS: dict[type, tuple[Column, ...]] = {t: columns(t) for t in TABLES}


@dataclass(frozen=True)
class Stored(Generic[R]):
    """A row as stored: the task that wrote it and that task's hash."""

    task: str
    hash: str
    row: R


@dataclass(frozen=True)
class TaskRecord:
    """A task's entry: `finished`, or `failed` with the error's type and message;
    `deterministic` failures (raised by toroid itself: a diverging network, a chain with
    no zero-error ends) are not retried unless asked."""

    task: str
    kind: str
    hash: str
    outcome: str
    error: str | None
    reason: str | None
    deterministic: bool
    seconds: float
    finished_at: float
    version: str  # of toroid, which ran the task

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def _version_message(path: Path, version: int) -> str:
    return (
        f"{path} has schema version {version}; this toroid reads version {SCHEMA_VERSION}: "
        f"run the study into a new --out directory, or delete {path} to recompute its results"
    )


class Weights:
    """The weights of a study (safetensors bundles under `directory/weights`), safe to use
    from any number of processes: every write is atomic and content-addressed."""

    def __init__(self, directory: str | Path, *, create: bool = True) -> None:
        self.directory = Path(directory)
        self.weights_dir = self.directory / "weights"
        if create:
            self.weights_dir.mkdir(parents=True, exist_ok=True)

    def save(self, key: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
        """Write `state` under the stem of task key `key`; returns the stem."""
        stem = stem_of(key)
        write_bundle(self.weights_dir, stem, dict(state), dict(meta))
        return stem

    def load(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return read_bundle(self.weights_dir, stem_of(key))


class Store:
    """Open (creating when needed) the store in `directory`. Only one process (the
    coordinator) writes the database."""

    def __init__(self, directory: str | Path, *, readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self.readonly = readonly
        try:
            if not readonly:
                self.directory.mkdir(parents=True, exist_ok=True)
            self.weights = Weights(self.directory, create=not readonly)
        except OSError as exc:
            raise StoreError(
                f"cannot use {self.directory} as a study directory: {exc.strerror or exc}"
            ) from None
        try:
            self._db = self._connect()
            self._open()
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a study database ({exc})") from None

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            return sqlite3.connect(self.path, timeout=60, isolation_level=None)
        if not self.path.is_file():
            raise StoreError(f"{self.directory} has no {DB_FILE}")
        # An archived study may sit on a read-only filesystem: there SQLite cannot create
        # the WAL index, and `immutable` tells it that nobody writes the file.
        writable = os.access(self.directory, os.W_OK)
        flags = "mode=ro" if writable else "mode=ro&immutable=1"
        return sqlite3.connect(f"file:{self.path}?{flags}", uri=True, isolation_level=None)

    @classmethod
    def records(cls, directory: str | Path) -> dict[str, TaskRecord]:
        """The task records of the store in `directory`, or none when it has no store yet
        (without creating one)."""
        if not (Path(directory) / DB_FILE).exists():
            return {}
        with cls(directory, readonly=True) as store:
            return store.tasks()

    @staticmethod
    def check_version(directory: str | Path) -> None:
        """Refuse a store of another schema version in one line (nothing is created)."""
        path = Path(directory) / DB_FILE
        if not path.is_file():
            return
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a study database ({exc})") from None
        if tables and version != SCHEMA_VERSION:
            raise StoreError(_version_message(path, version))

    def _open(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(_version_message(self.path, version))
        self._empty = not tables
        if self.readonly:
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if tables:
            return
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE tasks (task TEXT PRIMARY KEY, kind TEXT NOT NULL, hash TEXT "
                "NOT NULL, outcome TEXT NOT NULL, error TEXT, reason TEXT, deterministic "
                "INTEGER NOT NULL, seconds REAL NOT NULL, finished_at REAL NOT NULL, version TEXT "
                "NOT NULL)"
            )
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for row_type, table in TABLES.items():
                sql = [c.sql for c in COLUMNS[row_type]]
                cols = ", ".join(["task TEXT NOT NULL", "hash TEXT NOT NULL", *sql])
                db.execute(f"CREATE TABLE {table} ({cols})")
                db.execute(f"CREATE INDEX {table}_task ON {table} (task)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._empty = False

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
    def tasks(self) -> dict[str, TaskRecord]:
        """Every recorded task, finished or failed, by key."""
        if self._empty:
            return {}
        query = (
            "SELECT task, kind, hash, outcome, error, reason, deterministic, seconds, "
            "finished_at, version FROM tasks ORDER BY task"
        )
        out = {}
        for values in self._db.execute(query):
            task, kind, hash, outcome, error, reason, deterministic, seconds, at, version = values
            record = TaskRecord(
                task, kind, hash, outcome, error, reason, bool(deterministic), seconds, at, version
            )
            out[record.task] = record
        return out

    def finished(self) -> dict[str, str]:
        """Finished tasks and the hash each was run with."""
        query = "SELECT task, hash FROM tasks WHERE outcome = 'finished'"
        return dict(self._db.execute(query).fetchall())

    def record(self, task: str, kind: str, hash: str, rows: Sequence[Row], seconds: float) -> None:
        """Replace `task`'s rows with `rows` and mark it finished, in one transaction."""
        with self._transaction() as db:
            self._delete(db, task)
            for row in rows:
                row_type = type(row)
                cols = COLUMNS[row_type]
                values = [task, hash, *(c.encode(getattr(row, c.name)) for c in cols)]
                marks = ", ".join("?" * len(values))
                db.execute(f"INSERT INTO {TABLES[row_type]} VALUES ({marks})", values)
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, 'finished', NULL, NULL, 0, ?, ?, ?)",
                (task, kind, hash, seconds, time.time(), toroid.__version__),
            )

    def record_failure(
        self,
        task: str,
        kind: str,
        hash: str,
        *,
        error: str,
        reason: str,
        deterministic: bool,
        seconds: float,
    ) -> None:
        """Mark `task` failed (its rows, if any, go) with the error's type and message."""
        with self._transaction() as db:
            self._delete(db, task)
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, 'failed', ?, ?, ?, ?, ?, ?)",
                (
                    task,
                    kind,
                    hash,
                    error,
                    reason,
                    int(deterministic),
                    seconds,
                    time.time(),
                    toroid.__version__,
                ),
            )

    @staticmethod
    def _delete(db: sqlite3.Connection, task: str) -> None:
        for table in TABLES.values():
            db.execute(f"DELETE FROM {table} WHERE task = ?", (task,))
        db.execute("DELETE FROM tasks WHERE task = ?", (task,))

    def drop(self, keys: Sequence[str]) -> None:
        """Delete the records and rows of the tasks `keys`, in one transaction."""
        with self._transaction() as db:
            for key in keys:
                self._delete(db, key)

    def rows(self, row_type: type[R], *, task: str | None = None) -> list[Stored[R]]:
        """The stored rows of `row_type` (of one task when given), in insertion order."""
        if self._empty:
            return []
        cols = COLUMNS[row_type]
        names = ", ".join(("task", "hash", *(c.name for c in cols)))
        query = f"SELECT {names} FROM {TABLES[row_type]}"
        args: tuple[str, ...] = ()
        if task is not None:
            query, args = query + " WHERE task = ?", (task,)
        out = []
        for values in self._db.execute(query + " ORDER BY rowid", args):
            fields = {c.name: c.decode(v) for c, v in zip(cols, values[2:], strict=True)}
            out.append(Stored(values[0], values[1], row_type(**fields)))
        return out
