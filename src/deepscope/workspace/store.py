"""The on-disk store behind a dataset atlas: one directory, one SQLite database (WAL) and NumPy arrays.

Layout (documented for users in docs/workspace.md)::

    WS/workspace.sqlite          meta, runs, chunks, run_state, samples, predictions, layers, layouts, feedback
    WS/runs/<id>/predictions.npy int64 [N]          predicted class per dataset index (-1: not scanned / skipped)
    WS/runs/<id>/probabilities.npy float32 [N, C]   softmax of the model output
    WS/runs/<id>/embeddings/<file>.npy float32 [N, D]  pooled activations of each recorded layer
    WS/runs/<id>/thumbnails.npy uint8 [N, h, w, c]  small pictures of the samples, for image grids
    WS/runs/<id>/weights.npz                        weight histograms of the model
    WS/runs/<id>/layouts/<file>.npy                 2-D layouts and neighbor lists, rows = scanned samples
    WS/locks/<fingerprint>.lock                     held by the one process writing that run (Store.writing)
    WS/artifacts/<kind>/<file>                      cached results (feature visualizations, patches...): artifacts

Arrays are indexed by dataset index and preallocated when a run starts (``np.lib.format.open_memmap``), so a
scan writes each chunk in place and its memory does not grow with the dataset. A chunk counts as written only
once its row in ``chunks`` is committed, in the same transaction as its predictions, its sample rows and the
run's merged reduction state (``run_state``): a scan killed at any point resumes from the committed chunks,
and nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deepscope._version import __version__
from deepscope.errors import SettingError, SettingTypeError, WorkspaceError

# Version 1: the first layout. Version 2: the artifacts table. Bump on any change to tables, columns or array
# files, and describe it in docs/workspace.md. An older workspace is brought up to date on open when a step in
# MIGRATIONS leads from its version to this one (a read-only one is read as it is); others are refused with a
# message saying which version wrote them.
SCHEMA_VERSION = 2
"""The workspace format this deepscope reads and writes (``meta.schema_version``; docs/workspace.md)."""
DATABASE = "workspace.sqlite"
"""The SQLite file inside a workspace directory."""
ARTIFACTS = "artifacts"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_fingerprint TEXT NOT NULL,
    n_samples INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL,
    classes TEXT NOT NULL,
    embedding_layer TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete')),
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE chunks (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    chunk INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    scanned INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    PRIMARY KEY (run_id, chunk)
);
CREATE TABLE run_state (run_id INTEGER PRIMARY KEY REFERENCES runs(id), state BLOB NOT NULL);
CREATE TABLE samples (
    idx INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    label INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'skipped')),
    error TEXT
);
CREATE TABLE predictions (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    predicted INTEGER NOT NULL,
    confidence REAL NOT NULL,
    label INTEGER,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE layers (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('embedding', 'layer')),
    width INTEGER NOT NULL,
    shape TEXT NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE layouts (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL,
    layer TEXT NOT NULL,
    params TEXT NOT NULL,
    file TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (run_id, kind, layer, params)
);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    run_id INTEGER REFERENCES runs(id),
    idx INTEGER,
    layer TEXT,
    unit INTEGER,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

ARTIFACTS_TABLE = """
CREATE TABLE artifacts (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    file TEXT NOT NULL,
    format TEXT NOT NULL CHECK (format IN ('npy', 'bytes')),
    version INTEGER NOT NULL,
    meta TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

# version -> the SQL that brings a workspace of the version before it up to it, in one transaction.
MIGRATIONS = {2: ARTIFACTS_TABLE}


@dataclass(frozen=True)
class Run:
    """One scan of one model over the workspace's dataset (a row of ``runs``)."""

    id: int
    fingerprint: str
    model: str
    dataset: str
    n_samples: int
    n_chunks: int
    classes: list[str]
    embedding_layer: str
    config: dict[str, Any]
    status: str

    @property
    def complete(self) -> bool:
        return self.status == "complete"


@dataclass(frozen=True)
class RunLayer:
    """A layer a run records: ``name`` (a layer name, see :mod:`deepscope.probe.layers`), ``role`` ('embedding'
    or 'layer'), ``width`` (its units: the columns of its embeddings array) and ``shape`` (per sample)."""

    name: str
    role: str
    width: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LayerRecord(RunLayer):
    """A recorded layer as stored: its :class:`RunLayer` fields and ``file``, the stem of its array under
    ``embeddings/``."""

    file: str


class SampleRow(NamedTuple):
    """A row of ``samples``: a dataset index, where the sample came from (``source``), its label (None: none),
    ``status`` ('ok' or 'skipped') and, for a skipped sample, why (``error``). A tuple, so that the rows of a chunk
    go into SQLite as they are."""

    index: int
    source: str
    label: int | None
    status: str
    error: str | None


@dataclass(frozen=True)
class SkippedSample:
    """A sample a scan could not read: its dataset ``index``, ``source`` and the ``error`` that stopped it."""

    index: int
    source: str
    error: str


@dataclass(frozen=True)
class SampleStatus:
    """Of the dataset indices below a bound: which ones were read (``scanned``, a mask) and which ``skipped``."""

    scanned: np.ndarray
    skipped: list[SkippedSample]


@dataclass(frozen=True)
class ChunkRows:
    """What committing a chunk records: its ``chunk`` number and dataset index range ``[start, stop)``, a
    :class:`SampleRow` per index, and per scanned sample (``indices``, dataset order) the ``predicted`` class,
    its probability (``confidence``) and the label (-1: none)."""

    chunk: int
    start: int
    stop: int
    samples: Sequence[SampleRow]
    indices: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Artifact:
    """A cached result in a workspace: its ``kind`` and ``key``, the ``version`` of the code that computed it,
    ``meta`` (JSON-ready) and ``path``, the file holding it (an ``.npy`` array, or raw bytes)."""

    kind: str
    key: str
    version: int
    meta: dict[str, Any]
    path: Path
    format: str

    def load(self) -> np.ndarray | bytes:
        """The stored value: the array (read into memory) or the bytes."""
        if not self.path.is_file():
            raise WorkspaceError(f"artifact {self.kind}/{self.key} lost its file {self.path}")
        if self.format == "npy":
            return np.load(self.path, allow_pickle=False)
        return self.path.read_bytes()


@dataclass(frozen=True)
class LayoutRecord:
    """A stored layout (or neighbor list): its ``kind``, ``layer``, ``params`` and ``file`` under ``layouts/``."""

    kind: str
    layer: str
    params: dict[str, Any]
    file: str


class Store:
    """A workspace directory: create it with :meth:`create`, open an existing one with :meth:`open`.

    Every write is a short transaction; readers (the workbench, pandas) can read while a scan writes (WAL).

    >>> import tempfile, deepscope as ds
    >>> store = ds.workspace.Store.create(tempfile.mkdtemp())
    >>> store.schema_version
    2
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, read_only: bool = False):
        self.path = path
        self.connection = connection
        # True for a workspace on storage this process cannot write (a read-only mount, a shared archive):
        # everything reads, every write raises a WorkspaceError saying so.
        self.read_only = read_only

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise WorkspaceError(
                f"workspace {self.path} is open read-only (read-only storage, or opened so), so {what} cannot be "
                "saved; copy the workspace to a writable directory to add to it"
            )

    # ------------------------------------------------------------------------------------------------------
    # opening

    @classmethod
    def create(cls, path: str | Path) -> Store:
        """Open the workspace at ``path``, creating the directory and database if there is none yet."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise WorkspaceError(f"workspace path {path} is a file; give a directory")
        if (path / DATABASE).exists():
            return cls.open(path)
        if path.is_dir() and any(path.iterdir()):
            raise WorkspaceError(
                f"{path} is not empty and holds no {DATABASE}; refusing to turn it into a workspace, "
                "give a new or empty directory"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            connection = _connect(path / DATABASE)
        except (OSError, sqlite3.OperationalError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise WorkspaceError(f"cannot create the workspace {path}: {reason}") from None
        with connection:
            connection.executescript(SCHEMA + ARTIFACTS_TABLE)
            connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("created_with", f"deepscope {__version__}")],
            )
        return cls(path, connection)

    @classmethod
    def open(cls, path: str | Path, read_only: bool = False) -> Store:
        """Open an existing workspace. One written by an older schema version is brought up to date (in one
        transaction) unless ``read_only``, or unless the database cannot be written: it is then read as it is,
        without the newer tables (:meth:`artifact` finds nothing, :meth:`put_artifact` refuses). Other versions
        are refused with a clear message."""
        path = Path(path)
        database = path / DATABASE
        if not database.is_file():
            raise WorkspaceError(f"{path} is not a deepscope workspace (no {DATABASE} in it)")
        storage_read_only = _on_read_only_storage(path)
        wal = database.with_name(database.name + "-wal")
        if storage_read_only and wal.is_file() and wal.stat().st_size > 0:
            raise WorkspaceError(
                f"workspace {path} is on read-only storage with transactions still in its write-ahead log "
                f"({wal.name}: the scan writing it did not finish); open it once on writable storage"
            )
        read_only = read_only or storage_read_only
        connection = _connect(database, read_only)
        try:
            rows = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as error:
            connection.close()
            raise WorkspaceError(f"{database} is not a deepscope workspace database: {error}") from None
        version = int(rows.get("schema_version", -1))
        known = range(min(MIGRATIONS, default=SCHEMA_VERSION) - 1, SCHEMA_VERSION + 1)
        if version not in known:
            connection.close()
            raise WorkspaceError(
                f"workspace {path} has schema version {version} (written by {rows.get('created_with', '?')}); "
                f"this deepscope reads versions {known.start} to {SCHEMA_VERSION}. Scan again into a new "
                "directory, or open it with the deepscope version that wrote it (docs/workspace.md lists the versions)"
            )
        if version < SCHEMA_VERSION and not read_only:
            steps = "".join(MIGRATIONS[step] for step in range(version + 1, SCHEMA_VERSION + 1))
            try:
                connection.executescript(
                    f"BEGIN IMMEDIATE; {steps}; UPDATE meta SET value='{SCHEMA_VERSION}' "
                    "WHERE key='schema_version'; COMMIT;"
                )
            except sqlite3.OperationalError as error:
                if connection.in_transaction:
                    connection.rollback()
                if "readonly" not in str(error).replace("-", "").replace(" ", ""):
                    connection.close()
                    raise WorkspaceError(
                        f"could not update workspace {path} to version {SCHEMA_VERSION}: {error}"
                    ) from None
                read_only = True  # a read-only file or mount: read it as it is
        return cls(path, connection, read_only)

    @property
    def schema_version(self) -> int:
        return int(self.connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def writing(self, fingerprint: str) -> Iterator[None]:
        """Hold the right to write the run with ``fingerprint``: one process at a time, so that a scan started
        twice with the same arguments (two terminals, a job restarted while the old one still runs) does not
        write the same chunks twice. The lock is the operating system's lock on ``locks/<fingerprint>.lock``
        (``filelock``), which ends with its process however that ends: a killed scan never blocks its resume."""
        self._check_writable("a scan")
        from filelock import FileLock, Timeout

        folder = self.path / "locks"
        folder.mkdir(exist_ok=True)
        lock = FileLock(folder / f"{fingerprint}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise WorkspaceError(
                f"another process is scanning into {self.path} with the same model, data and settings (it holds "
                f"locks/{fingerprint}.lock); wait for it to finish, or stop it and scan again to continue where "
                "it stopped"
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed on exit, rolled back on an exception."""
        with self.connection:
            yield self.connection

    # ------------------------------------------------------------------------------------------------------
    # runs

    def runs(self) -> list[Run]:
        """Every run, oldest first."""
        return [_run(row) for row in self.connection.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id")]

    def run(self, run_id: int | None = None) -> Run:
        """The run with this id, or the latest complete run (the latest run when none is complete)."""
        runs = self.runs()
        if not runs:
            raise WorkspaceError(f"workspace {self.path} holds no scan yet; run ds.atlas.scan(..., out=...)")
        if run_id is None:
            complete = [run for run in runs if run.complete]
            return (complete or runs)[-1]
        for run in runs:
            if run.id == run_id:
                return run
        raise WorkspaceError(f"workspace {self.path} has no run {run_id}; runs: {[r.id for r in runs]}")

    def find_run(self, fingerprint: str) -> Run | None:
        for run in self.runs():
            if run.fingerprint == fingerprint:
                return run
        return None

    def dataset_fingerprint(self) -> tuple[str, str] | None:
        """(dataset name, fingerprint) this workspace holds, or None while it is empty."""
        row = self.connection.execute(
            "SELECT dataset, dataset_fingerprint FROM runs ORDER BY id LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def start_run(
        self,
        *,
        fingerprint: str,
        model: str,
        model_fingerprint: str,
        dataset: str,
        dataset_fingerprint: str,
        n_samples: int,
        n_chunks: int,
        classes: Sequence[str],
        embedding_layer: str,
        config: Mapping[str, Any],
        layers: Sequence[RunLayer],
        arrays: Mapping[str, tuple[tuple[int, ...], str]],
    ) -> Run:
        """Record a new run and preallocate its arrays. Each of ``layers`` is stored as
        ``embeddings/<file>.npy`` [n_samples, width]; ``arrays``: other files, relative name -> (shape, dtype)."""
        self._check_writable("a scan")
        held = self.dataset_fingerprint()
        if held is not None and held[1] != dataset_fingerprint:
            same_name = " (the same name, other content: the data changed, or its items are random)"
            raise WorkspaceError(
                f"workspace {self.path} holds scans of dataset {held[0]!r}; a workspace is for one dataset, "
                f"so scan {dataset!r}{same_name if held[0] == dataset else ''} into another directory"
            )
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (fingerprint, model, model_fingerprint, dataset, dataset_fingerprint, "
                "n_samples, n_chunks, classes, embedding_layer, config, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (
                    fingerprint,
                    model,
                    model_fingerprint,
                    dataset,
                    dataset_fingerprint,
                    n_samples,
                    n_chunks,
                    json.dumps(list(classes)),
                    embedding_layer,
                    json.dumps(dict(config)),
                    time.time(),
                ),
            )
            run_id = int(cursor.lastrowid)
            used: set[str] = set()
            arrays = dict(arrays)
            for position, layer in enumerate(layers):
                file = _file_name(layer.name, used)
                arrays[f"embeddings/{file}.npy"] = ((n_samples, layer.width), "float32")
                db.execute(
                    "INSERT INTO layers (run_id, position, name, role, width, shape, file) VALUES (?,?,?,?,?,?,?)",
                    (
                        run_id,
                        position,
                        layer.name,
                        layer.role,
                        layer.width,
                        json.dumps(list(layer.shape)),
                        file,
                    ),
                )
        folder = self.run_dir(run_id)
        (folder / "embeddings").mkdir(parents=True, exist_ok=True)
        (folder / "layouts").mkdir(exist_ok=True)
        for relative, (shape, dtype) in arrays.items():
            array = np.lib.format.open_memmap(folder / relative, mode="w+", dtype=dtype, shape=shape)
            if np.issubdtype(array.dtype, np.signedinteger):
                array[:] = -1
            sync_array(array)
            del array
        return self.run(run_id)

    def run_dir(self, run_id: int) -> Path:
        return self.path / "runs" / str(run_id)

    def layers(self, run_id: int) -> list[LayerRecord]:
        rows = self.connection.execute(
            "SELECT name, role, width, shape, file FROM layers WHERE run_id=? ORDER BY position", (run_id,)
        )
        return [
            LayerRecord(name, role, width, tuple(json.loads(shape)), file)
            for name, role, width, shape, file in rows
        ]

    def array(self, run_id: int, relative: str, writable: bool = False) -> np.ndarray:
        """A run's array file, memory-mapped (read-only unless ``writable``)."""
        path = self.run_dir(run_id) / relative
        if not path.is_file():
            raise WorkspaceError(f"workspace {self.path} run {run_id} has no array {relative}")
        return np.load(path, mmap_mode="r+" if writable else "r")

    # ------------------------------------------------------------------------------------------------------
    # chunks and the merged reduction state

    def committed_chunks(self, run_id: int) -> set[int]:
        return {
            row[0] for row in self.connection.execute("SELECT chunk FROM chunks WHERE run_id=?", (run_id,))
        }

    def state(self, run_id: int) -> dict[str, np.ndarray] | None:
        row = self.connection.execute("SELECT state FROM run_state WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else unpack_arrays(row[0])

    def commit_chunks(
        self, run_id: int, chunks: Sequence[ChunkRows], state: Mapping[str, np.ndarray]
    ) -> None:
        """Make ``chunks`` count, atomically: their sample rows, chunk rows and prediction rows, and the run's new
        merged ``state``. The chunks' array rows must already be written and flushed."""
        self._check_writable("a scan")
        now = time.time()
        with self.transaction() as db:
            for rows in chunks:
                db.executemany(
                    "INSERT OR REPLACE INTO samples (idx, source, label, status, error) VALUES (?,?,?,?,?)",
                    rows.samples,
                )
                scanned = sum(1 for sample in rows.samples if sample.status == "ok")
                db.execute(
                    "INSERT INTO chunks (run_id, chunk, start, stop, scanned, skipped, committed_at) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (run_id, rows.chunk, rows.start, rows.stop, scanned, len(rows.samples) - scanned, now),
                )
                labels = [None if label < 0 else label for label in rows.labels.tolist()]
                db.executemany(
                    "INSERT OR REPLACE INTO predictions (run_id, idx, predicted, confidence, label) "
                    "VALUES (?,?,?,?,?)",
                    zip(
                        itertools.repeat(run_id),
                        rows.indices.tolist(),
                        rows.predicted.tolist(),
                        rows.confidence.tolist(),
                        labels,
                        strict=False,  # the repeated run id is endless
                    ),
                )
            db.execute(
                "INSERT OR REPLACE INTO run_state (run_id, state) VALUES (?, ?)", (run_id, pack_arrays(state))
            )

    def finish_run(self, run_id: int) -> None:
        self._check_writable("a scan")
        with self.transaction() as db:
            db.execute("UPDATE runs SET status='complete', finished_at=? WHERE id=?", (time.time(), run_id))
        # Move every committed transaction from the write-ahead log into the database file, so that a finished
        # workspace copied or mounted read-only is whole in workspace.sqlite alone.
        self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ------------------------------------------------------------------------------------------------------
    # samples

    def sample_status(self, stop: int) -> SampleStatus:
        """Which dataset indices below ``stop`` were scanned, and the skipped ones."""
        scanned = np.zeros(stop, dtype=bool)
        skipped = []
        for index, source, status, error in self.connection.execute(
            "SELECT idx, source, status, error FROM samples WHERE idx < ? ORDER BY idx", (stop,)
        ):
            if status == "ok":
                scanned[index] = True
            else:
                skipped.append(SkippedSample(index, source, error))
        return SampleStatus(scanned, skipped)

    def sources(self, indices: Sequence[int]) -> list[str]:
        found = dict(
            self.connection.execute(
                f"SELECT idx, source FROM samples WHERE idx IN ({','.join('?' * len(indices))})",
                [int(i) for i in indices],
            ).fetchall()
        )
        return [found.get(int(i), "") for i in indices]

    # ------------------------------------------------------------------------------------------------------
    # layouts

    def find_layout(self, run_id: int, kind: str, layer: str, params: Mapping[str, Any]) -> Path | None:
        row = self.connection.execute(
            "SELECT file FROM layouts WHERE run_id=? AND kind=? AND layer=? AND params=?",
            (run_id, kind, layer, _canonical(params)),
        ).fetchone()
        if row is None:
            return None
        path = self.run_dir(run_id) / "layouts" / row[0]
        return path if path.is_file() else None

    def save_layout(
        self, run_id: int, kind: str, layer: str, params: Mapping[str, Any], array: np.ndarray
    ) -> Path:
        """Store a layout (or neighbor list) array; an existing one with the same parameters is replaced."""
        self._check_writable("a layout")
        folder = self.run_dir(run_id) / "layouts"
        folder.mkdir(parents=True, exist_ok=True)
        used = {path.stem for path in folder.glob("*.npy")}
        existing = self.find_layout(run_id, kind, layer, params)
        name = existing.name if existing else _file_name(f"{kind}-{layer}", used) + ".npy"
        temporary = folder / (name + ".tmp")
        with open(temporary, "wb") as handle:
            np.save(handle, array)
        temporary.replace(folder / name)
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO layouts (run_id, kind, layer, params, file, created_at) VALUES (?,?,?,?,?,?)",
                (run_id, kind, layer, _canonical(params), name, time.time()),
            )
        return folder / name

    def layouts(self, run_id: int) -> list[LayoutRecord]:
        """Every stored layout of a run, oldest first."""
        rows = self.connection.execute(
            "SELECT kind, layer, params, file FROM layouts WHERE run_id=? ORDER BY id", (run_id,)
        )
        return [LayoutRecord(kind, layer, json.loads(params), file) for kind, layer, params, file in rows]

    # ------------------------------------------------------------------------------------------------------
    # feedback

    def add_feedback(
        self,
        kind: str,
        value: Any,
        *,
        index: int | None = None,
        layer: str | None = None,
        unit: int | None = None,
        run_id: int | None = None,
    ) -> int:
        """Record one piece of user feedback ('flag', 'relabel', 'note', 'unit_name', ...) about a sample or a
        unit; ``value`` is stored as JSON. Returns its id.

        >>> import tempfile, deepscope as ds
        >>> store = ds.workspace.Store.create(tempfile.mkdtemp())
        >>> store.add_feedback("relabel", 7, index=12)
        1
        >>> store.feedback()[0]["value"]
        7
        """
        self._check_writable("feedback")
        if not isinstance(kind, str):
            raise SettingTypeError(f"feedback kind must be a non-empty string, got {kind!r}")
        if not kind:
            raise SettingError("feedback kind must be a non-empty string, got ''")
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO feedback (run_id, idx, layer, unit, kind, value, created_at) VALUES (?,?,?,?,?,?,?)",
                (run_id, index, layer, unit, kind, json.dumps(value), time.time()),
            )
        return int(cursor.lastrowid)

    def feedback(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every feedback row (optionally of one kind), oldest first, values decoded."""
        query = "SELECT id, run_id, idx, layer, unit, kind, value, created_at FROM feedback"
        rows = self.connection.execute(
            query + (" WHERE kind=? ORDER BY id" if kind else " ORDER BY id"), (kind,) if kind else ()
        )
        keys = ("id", "run_id", "index", "layer", "unit", "kind", "value", "created_at")
        return [{**dict(zip(keys, row, strict=True)), "value": json.loads(row[6])} for row in rows]

    # ------------------------------------------------------------------------------------------------------
    # artifacts: results that cost seconds, computed once (the workbench's feature visualizations, layouts of
    # other layers, top-patch crops, deletion/insertion scores)

    def put_artifact(
        self,
        kind: str,
        key: str,
        value: np.ndarray | bytes,
        meta: Mapping[str, Any] | None = None,
        version: int = 1,
    ) -> Artifact:
        """Keep ``value`` (an array, stored as ``.npy``, or bytes) under (``kind``, ``key``), replacing what was
        there. ``version`` is the version of the code that computed it (:meth:`artifact` finds only that one);
        ``meta`` is stored as JSON.

        >>> import tempfile, numpy as np, deepscope as ds
        >>> store = ds.workspace.Store.create(tempfile.mkdtemp())
        >>> _ = store.put_artifact("layout", "tsne:fc3", np.zeros((3, 2), np.float32), {"perplexity": 30})
        >>> found = store.artifact("layout", "tsne:fc3")
        >>> found.load().shape, found.meta
        ((3, 2), {'perplexity': 30})
        """
        for name, text in (("kind", kind), ("key", key)):
            if not isinstance(text, str) or not text:
                raise SettingTypeError(f"an artifact's {name} must be a non-empty string, got {text!r}")
        if isinstance(value, np.ndarray):
            form = "npy"
        elif isinstance(value, (bytes, bytearray)):
            form = "bytes"
        else:
            raise SettingTypeError(f"an artifact is a NumPy array or bytes, got {type(value).__name__}")
        self._check_writable(f"the artifact {kind}/{key}")
        try:
            meta_text = json.dumps(dict(meta or {}), allow_nan=False)
        except ValueError:
            raise SettingError(
                f"the meta of artifact {kind}/{key} holds NaN or infinity, which JSON cannot keep; store None"
            ) from None
        except TypeError as error:
            raise SettingTypeError(f"the meta of artifact {kind}/{key} is not JSON: {error}") from None
        folder = self.path / ARTIFACTS / _file_name(kind, set())
        folder.mkdir(parents=True, exist_ok=True)
        existing = self.artifact(kind, key, version=None)
        name = existing.path.name if existing else _unique_file(folder, key, form)
        temporary = folder / (name + ".tmp")
        with open(temporary, "wb") as handle:
            if form == "npy":
                np.save(handle, value, allow_pickle=False)
            else:
                handle.write(bytes(value))
        temporary.replace(folder / name)
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts (kind, key, file, format, version, meta, created) "
                "VALUES (?,?,?,?,?,?,?)",
                (kind, key, f"{folder.name}/{name}", form, int(version), meta_text, time.time()),
            )
        return Artifact(kind, key, int(version), json.loads(meta_text), folder / name, form)

    def artifact(self, kind: str, key: str, version: int | None = 1) -> Artifact | None:
        """The artifact kept under (``kind``, ``key``), or None: none was kept, it was computed by another
        ``version`` (None: any), its file is gone, or the workspace predates artifacts and is read-only."""
        try:
            row = self.connection.execute(
                "SELECT file, format, version, meta FROM artifacts WHERE kind=? AND key=?", (kind, key)
            ).fetchone()
        except sqlite3.OperationalError:
            return None  # a read-only workspace of schema version 1 has no artifacts table
        if row is None or (version is not None and row[2] != version):
            return None
        found = Artifact(kind, key, row[2], json.loads(row[3]), self.path / ARTIFACTS / row[0], row[1])
        return found if found.path.is_file() else None

    def artifacts(self, kind: str) -> list[str]:
        """The keys of every artifact of ``kind``, oldest first."""
        try:
            rows = self.connection.execute(
                "SELECT key FROM artifacts WHERE kind=? ORDER BY created", (kind,)
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        return [row[0] for row in rows]


_RUN_COLUMNS = (
    "id, fingerprint, model, dataset, n_samples, n_chunks, classes, embedding_layer, config, status"
)


def _run(row: tuple) -> Run:
    run_id, fingerprint, model, dataset, n_samples, n_chunks, classes, embedding_layer, config, status = row
    return Run(
        run_id,
        fingerprint,
        model,
        dataset,
        n_samples,
        n_chunks,
        json.loads(classes),
        embedding_layer,
        json.loads(config),
        status,
    )


def _on_read_only_storage(path: Path) -> bool:
    """Whether this process cannot write in ``path``: a read-only mount, or a directory without write access."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY) or not os.access(path, os.W_OK)


def _connect(database: Path, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        uri = f"{database.resolve().as_uri()}?mode=ro"
        if _on_read_only_storage(database.parent):
            # No WAL index or lock file can be made on read-only storage: read the database file as it is
            # (immutable), which holds every committed transaction once the writer has finished (finish_run
            # checkpoints the log into it).
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
    connection = sqlite3.connect(database, timeout=30.0, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a committed transaction survives a killed process; only an OS crash may lose the
    # last commits, which a resumed scan then redoes.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def _file_name(name: str, used: set[str]) -> str:
    """A file-system-safe, unique file stem for a layer or layout name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"
    candidate, counter = stem, 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}-{counter}"
    used.add(candidate)
    return candidate


def _unique_file(folder: Path, key: str, form: str) -> str:
    """A file name for a new artifact: the key made file-system safe and short, with a hash of the whole key
    (two keys that differ only in characters the file system cannot hold stay apart)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "artifact"
    return f"{stem}-{digest}.{'npy' if form == 'npy' else 'bin'}"


def _canonical(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str)


def sync_array(array: np.memmap) -> None:
    """Make the rows written into a memory-mapped array durable on disk.

    On Linux, ``fdatasync`` on the file writes back the pages dirtied through the mapping, and Python releases
    the GIL while it waits for the disk; ``np.memmap.flush`` (``msync``) holds the GIL for the whole wait, so a
    commit on a background thread would stall the scan. Elsewhere ``msync`` is the portable way.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.npy"
    >>> rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(3,))
    >>> rows[1] = 7
    >>> sync_array(rows)
    >>> np.load(path).tolist()
    [0, 7, 0]
    """
    if sys.platform.startswith("linux") and isinstance(array, np.memmap) and array.filename:
        descriptor = os.open(array.filename, os.O_RDONLY)
        try:
            os.fdatasync(descriptor)
        finally:
            os.close(descriptor)
    else:
        array.flush()


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A dict of arrays -> bytes (an uncompressed .npz, never pickled).

    >>> unpack_arrays(pack_arrays({"a": np.arange(3)}))["a"].tolist()
    [0, 1, 2]
    """
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
    return buffer.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays :func:`pack_arrays` packed (see its example); refuses pickled objects."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}
