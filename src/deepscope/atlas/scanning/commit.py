"""Committing a scan to its workspace: starting the run (its arrays preallocated, the model's weight histograms
saved), writing each chunk's rows into the memory-mapped arrays and its reductions into the run's, and
committing finished chunks in the background, in order, a few times a second."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from deepscope.atlas.quality import save_weight_histograms, weight_histograms
from deepscope.atlas.scanning.plan import ScanPlan
from deepscope.atlas.scanning.reductions import ScanState
from deepscope.atlas.scanning.scanner import ChunkResult
from deepscope.workspace.store import ChunkRows, Run, RunLayer, Store, sync_array
from deepscope.zoo.vision_model import VisionModel

# Seconds between the starts of two commits of finished chunks, and how many finished chunks may wait for one.
COMMIT_INTERVAL = 0.5
MAX_WAITING_CHUNKS = 8


def start_run(
    store: Store,
    plan: ScanPlan,
    *,
    fingerprint: str,
    model: str,
    model_fingerprint: str,
    dataset: str,
    dataset_fingerprint: str,
    vm: VisionModel,
) -> Run:
    """Record a new run of ``plan`` in ``store``: its arrays preallocated, and the weight histograms of ``vm``
    (see :func:`write_chunks` for an example)."""
    n, classes = plan.n_samples, len(plan.classes)
    arrays: dict[str, tuple[tuple[int, ...], str]] = {
        "predictions.npy": ((n,), "int64"),
        "labels.npy": ((n,), "int64"),
        "probabilities.npy": ((n, classes), "float32"),
    }
    if plan.thumbnail is not None:
        arrays["thumbnails.npy"] = ((n, *plan.thumbnail), "uint8")
    run = store.start_run(
        fingerprint=fingerprint,
        model=model,
        model_fingerprint=model_fingerprint,
        dataset=dataset,
        dataset_fingerprint=dataset_fingerprint,
        n_samples=n,
        n_chunks=plan.n_chunks,
        classes=plan.classes,
        embedding_layer=plan.embedding_layer,
        config=plan.to_dict(),
        layers=[
            RunLayer(name, "embedding" if name == plan.embedding_layer else "layer", units, shape)
            for name, units, shape in zip(plan.layers, plan.units, plan.shapes, strict=True)
        ],
        arrays=arrays,
    )
    save_weight_histograms(store.run_dir(run.id) / "weights.npz", weight_histograms(vm))
    return run


class ChunkWriter:
    """Writes chunk results into the run's arrays and commits them with the merged reductions."""

    def __init__(self, store: Store, run: Run, plan: ScanPlan, device: torch.device):
        self.store = store
        self.run = run
        self.plan = plan
        self.device = device
        saved = store.state(run.id)
        self.layers = plan.layer_units()
        self.state = (
            ScanState.from_state_dict(saved, self.layers, device)
            if saved is not None
            else ScanState(self.layers, len(plan.classes), plan.k, device)
        )
        self.arrays = {
            "predictions": store.array(run.id, "predictions.npy", writable=True),
            "labels": store.array(run.id, "labels.npy", writable=True),
            "probabilities": store.array(run.id, "probabilities.npy", writable=True),
        }
        if plan.thumbnail is not None:
            self.arrays["thumbnails"] = store.array(run.id, "thumbnails.npy", writable=True)
        self.embeddings = [
            store.array(run.id, f"embeddings/{record.file}.npy", writable=True)
            for record in store.layers(run.id)
        ]

    def write(self, result: ChunkResult) -> ChunkRows:
        """Put a chunk's rows into the memory-mapped arrays (the page cache: nothing of them waits in memory) and
        its reductions into the run's; both count once :meth:`commit` has recorded the chunk."""
        rows = result.indices
        self.arrays["predictions"][rows] = result.predicted
        self.arrays["labels"][rows] = result.labels
        self.arrays["probabilities"][rows] = result.probabilities
        if result.thumbnails is not None and "thumbnails" in self.arrays:
            self.arrays["thumbnails"][rows] = result.thumbnails
        for array, values in zip(self.embeddings, result.embeddings, strict=True):
            array[rows] = values
        self.state.merge(ScanState.from_state_dict(result.state, self.layers, self.device))
        confidence = result.probabilities.max(1) if len(rows) else np.zeros(0, np.float32)
        return ChunkRows(
            chunk=result.chunk,
            start=result.start,
            stop=result.stop,
            samples=result.samples,
            indices=rows,
            predicted=result.predicted,
            confidence=confidence,
            labels=result.labels,
        )

    def commit(self, chunks: Sequence[ChunkRows], state: dict[str, np.ndarray]) -> None:
        """Flush every array once, then record the written chunks and ``state`` (the run's reductions over every
        chunk written so far) in one transaction."""
        for array in [*self.arrays.values(), *self.embeddings]:
            sync_array(array)
        self.store.commit_chunks(self.run.id, chunks, state)


def write_chunks(store: Store, run: Run, plan: ScanPlan, results: Iterable[ChunkResult], bar: Any) -> None:
    """Write and commit each chunk's results as they come (``bar``: a progress bar to update, or None).

    Each finished chunk's rows go into the arrays and its reductions into the run's at once; a second thread makes
    them durable and commits them (flush, then one SQLite transaction) while the next ones are computed, in order.
    A commit starts once the previous one is done and COMMIT_INTERVAL has passed since it started, with every
    chunk written by then, so that a fast model commits a few times a second, not per chunk; at most
    MAX_WAITING_CHUNKS wait (their sample and prediction records), which bounds memory. Stopped by an exception
    (an interrupt included), the chunks finished by then are committed, each exactly once.

    >>> import tempfile, deepscope as ds
    >>> from deepscope.atlas.scanning.plan import plan_scan
    >>> from deepscope.atlas.scanning.scanner import ChunkScanner
    >>> vm, digits = ds.load_model("zoo:lenet_mnist"), ds.datasets.mnist5k("test").subset(range(200))
    >>> plan = plan_scan(vm, digits, "fc3:input", batch_size=50, chunk_size=100, k=4, thumbnail_size=0)
    >>> store = Store.create(tempfile.mkdtemp())
    >>> run = start_run(store, plan, fingerprint="run", model="lenet", model_fingerprint="lenet",
    ...                 dataset="digits", dataset_fingerprint="digits", vm=vm)
    >>> scanner = ChunkScanner(vm, digits, plan)
    >>> write_chunks(store, run, plan, [scanner.scan_chunk(1)], bar=None)
    >>> store.committed_chunks(run.id), store.state(run.id)["scanned"].item()
    ({1}, 100)
    """
    writer = ChunkWriter(store, run, plan, torch.device("cpu"))
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepscope-commit") as committer:
            committing, started, waiting = None, float("-inf"), []
            try:
                for result in results:
                    waiting.append(writer.write(result))
                    idle = committing is None or committing.done()
                    due = idle and time.monotonic() - started >= COMMIT_INTERVAL
                    if due or len(waiting) >= MAX_WAITING_CHUNKS:
                        if committing is not None:
                            committing.result()
                        snapshot = writer.state.state_dict()  # the waiting chunks are all merged into it
                        # Emptied before the hand-over: an interrupt from here on can lose these chunks (they
                        # are scanned again on resume) but never commit them twice.
                        handed, waiting = waiting, []
                        committing = committer.submit(writer.commit, handed, snapshot)
                        started = time.monotonic()
                    if bar is not None:
                        bar.update(result.stop - result.start)
            finally:  # also when stopped: the finished chunks are kept
                if committing is not None:
                    committing.result()
                if waiting:
                    writer.commit(waiting, writer.state.state_dict())
    finally:
        if bar is not None:
            bar.close()
