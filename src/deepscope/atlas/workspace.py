"""The analysis view of a scanned workspace: predictions, labels, probabilities, embeddings, layouts, statistics.

Every per-sample array has one row per scanned sample, in dataset order; ``indices`` gives each row's dataset
index (samples that could not be read are left out and listed in ``skipped``). Whatever names a sample
(top-k lists, confused pairs, neighbors) names it by dataset index.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.atlas.layouts import LAYOUTS, GridLayout, image_grid, nearest_neighbors
from deepscope.atlas.layouts import layout as embedding_layout
from deepscope.atlas.quality import (
    ClassReport,
    ConfusedPair,
    class_report,
    load_weight_histograms,
    most_confused,
)
from deepscope.atlas.scanning.reductions import Histogram, histogram_from_state
from deepscope.atlas.selectivity import Selectivity, class_selectivity
from deepscope.errors import LayerNotFoundError, SettingError, WorkspaceError, suggestion
from deepscope.workspace.store import LayerRecord, Run, SampleStatus, SkippedSample, Store


class Workspace:
    """One scan (a run) in a workspace directory. Get one from :func:`deepscope.atlas.scan` or
    :func:`deepscope.atlas.open_workspace`.

    >>> import tempfile, deepscope as ds
    >>> path = tempfile.mkdtemp()
    >>> _ = ds.atlas.scan("zoo:lenet_mnist", ds.datasets.mnist5k("test").subset(range(200)), out=path)
    >>> ws = ds.atlas.open_workspace(path)
    >>> int(ws.confusion_matrix().sum()), ws.probabilities.shape, ws.embeddings().shape, ws.thumbnails.shape
    (200, (200, 10), (200, 84), (200, 28, 28, 1))
    """

    def __init__(self, store: Store, run: Run):
        self.store = store
        self.run = run

    # ------------------------------------------------------------------------------------------------------
    # what the run is

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def complete(self) -> bool:
        """False while the scan is still running or was stopped (the arrays then hold the committed chunks)."""
        return self.run.complete

    @property
    def classes(self) -> list[str]:
        return list(self.run.classes)

    @property
    def embedding_layer(self) -> str:
        """The default layer of :meth:`embeddings` and the layouts (the input of the classifier by default)."""
        return self.run.embedding_layer

    @property
    def layers(self) -> list[str]:
        """Every recorded layer, embedding first."""
        return [record.name for record in self._layer_records.values()]

    @property
    def dataset_fingerprint(self) -> str:
        row = self.store.connection.execute(
            "SELECT dataset_fingerprint FROM runs WHERE id=?", (self.run.id,)
        ).fetchone()
        return row[0]

    @property
    def model_fingerprint(self) -> str:
        """The hash of the scanned model (:func:`deepscope.atlas.scanning.fingerprints.model_fingerprint`)."""
        row = self.store.connection.execute(
            "SELECT model_fingerprint FROM runs WHERE id=?", (self.run.id,)
        ).fetchone()
        return row[0]

    @cached_property
    def _layer_records(self) -> dict[str, LayerRecord]:
        return {record.name: record for record in self.store.layers(self.run.id)}

    @cached_property
    def _committed(self) -> np.ndarray:
        """Mask of the dataset indices in committed chunks."""
        written = np.zeros(self.run.n_samples, dtype=bool)
        for start, stop in self.store.connection.execute(
            "SELECT start, stop FROM chunks WHERE run_id=?", (self.run.id,)
        ):
            written[start:stop] = True
        return written

    @cached_property
    def _samples(self) -> SampleStatus:
        return self.store.sample_status(self.run.n_samples)

    @cached_property
    def _valid(self) -> np.ndarray:
        """Mask of the dataset indices whose rows hold a scanned sample."""
        return self._samples.scanned & self._committed

    @property
    def indices(self) -> np.ndarray:
        """Dataset index of each row."""
        return np.flatnonzero(self._valid)

    @property
    def skipped(self) -> list[SkippedSample]:
        """Every sample the scan could not read: its dataset index, source and error."""
        return [sample for sample in self._samples.skipped if self._committed[sample.index]]

    def _rows(self, relative: str) -> np.ndarray:
        return np.asarray(self.store.array(self.run.id, relative)[self._valid])

    # ------------------------------------------------------------------------------------------------------
    # per-sample arrays

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class per row, int64 ``[N]``."""
        return self._rows("predictions.npy")

    @property
    def labels(self) -> np.ndarray | None:
        """Label per row, int64 ``[N]`` (-1 where a sample has none), or None when no sample has one."""
        labels = self._rows("labels.npy")
        return labels if (labels >= 0).any() else None

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax class probabilities per row, float32 ``[N, classes]``."""
        return self._rows("probabilities.npy")

    @property
    def thumbnails(self) -> np.ndarray | None:
        """uint8 ``[N, h, w, channels]`` pictures of the samples, or None when the scan kept none."""
        if self.run.config.get("thumbnail") is None:
            return None
        return self._rows("thumbnails.npy")

    def embeddings(self, layer: str | None = None) -> np.ndarray:
        """Pooled activations of ``layer`` (default: the embedding layer) per row, float32 ``[N, units]``."""
        record = self._layer(layer)
        return self._rows(f"embeddings/{record.file}.npy")

    def _layer(self, layer: str | None) -> LayerRecord:
        name = self.embedding_layer if layer is None else layer
        if name not in self._layer_records:
            raise LayerNotFoundError(
                f"the scan in {self.path} did not record layer {name!r}.{suggestion(name, self.layers)} "
                f"Recorded: {', '.join(self.layers)}"
            )
        return self._layer_records[name]

    # ------------------------------------------------------------------------------------------------------
    # reductions

    @cached_property
    def _state(self) -> dict[str, np.ndarray]:
        state = self.store.state(self.run.id)
        if state is None:
            raise WorkspaceError(f"the scan in {self.path} has not committed any chunk yet")
        return state

    def confusion_matrix(self, normalize: str | None = None) -> np.ndarray:
        """``[classes, classes]`` counts, rows = labels, columns = predictions (scikit-learn's convention);
        ``normalize`` 'true' (rows sum to 1), 'pred' (columns) or 'all'. Needs labelled data."""
        if self.labels is None:
            raise WorkspaceError(
                f"the data scanned in {self.path} has no labels, so there is no confusion matrix"
            )
        matrix = self._state["confusion"].astype(np.int64)
        if normalize is None:
            return matrix
        axis = {"true": 1, "pred": 0, "all": None}
        if normalize not in axis:
            raise SettingError(f"normalize must be None, 'true', 'pred' or 'all', got {normalize!r}")
        total = matrix.sum(axis=axis[normalize], keepdims=axis[normalize] is not None)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(matrix / total)

    def class_report(self) -> ClassReport:
        """Per-class precision, recall, F1 and support."""
        return class_report(self.confusion_matrix(), self.classes)

    def most_confused(self, n: int = 10, samples: int = 8) -> list[ConfusedPair]:
        """The ``n`` most frequent (label, predicted) mistakes, each with its most confident samples."""
        labels = self.labels
        if labels is None:
            raise WorkspaceError(f"the data scanned in {self.path} has no labels")
        return most_confused(
            self.confusion_matrix(), labels, self.predictions, self.probabilities, self.indices, n, samples
        )

    def _layer_state(self, layer: str) -> dict[str, np.ndarray]:
        position = self.layers.index(self._layer(layer).name)
        prefix = f"layer{position}."
        return {key[len(prefix) :]: value for key, value in self._state.items() if key.startswith(prefix)}

    def activation_histogram(self, layer: str | None = None) -> Histogram:
        """Histogram of every output value of ``layer`` over the dataset (log bins, exact extremes and mean)."""
        return histogram_from_state(self._layer_state(self._layer(layer).name))

    def unit_statistics(self, layer: str | None = None) -> dict[str, np.ndarray]:
        """Per unit of ``layer``: ``max`` over the dataset, ``activity`` (fraction of samples where the unit is
        positive somewhere), ``mean`` (of its pooled value) and ``dead`` (never positive on any sample)."""
        state = self._layer_state(self._layer(layer).name)
        samples = max(int(state["samples"]), 1)
        return {
            "max": state["unit_max"].astype(np.float32),
            "activity": state["unit_active"] / samples,
            "mean": state["unit_sum"] / samples,
            "dead": state["unit_max"] <= 0,
        }

    def top_k(self, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's strongest samples by its spatial maximum: ``(values, dataset indices)``, each
        ``[units, k]``, best first (ties: lower index first). Where in a map the maximum lies is not kept by the
        scan (it would cost more than the rest of the per-unit work); run the unit on those k samples for it."""
        state = self._layer_state(self._layer(layer).name)
        filled = min(int(state["topk_seen"]), state["topk_values"].shape[1])
        return state["topk_values"][:, :filled], state["topk_sample_indices"][:, :filled]

    def selectivity(self, layer: str | None = None, bins: int = 20, threshold: float = 0.5) -> Selectivity:
        """The class selectivity of each unit of ``layer`` (Sun et al. 2015's per-class activation histograms,
        Morcos et al. 2018's index; see :mod:`deepscope.atlas.selectivity`) from the pooled activations and labels
        of the labeled samples: per class means and ``bins`` histogram bins per unit, the index, the preferred
        class and the classes each unit responds to (mean >= ``threshold`` x its highest class mean). Needs
        labeled data; the index assumes non-negative activities, so record a layer after its ReLU.

        >>> import tempfile, deepscope as ds
        >>> digits = ds.datasets.mnist5k("test").subset(range(300))
        >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, out=tempfile.mkdtemp(), thumbnail_size=0)
        >>> result = ws.selectivity("fc3:input")  # the ReLU output in front of the classifier
        >>> result.index.shape, result.histograms.shape, bool(result.defined.any())
        ((84,), (84, 10, 20), True)
        """
        name = self._layer(layer).name
        labels = self._rows("labels.npy")
        if not (labels >= 0).any():
            raise WorkspaceError(
                f"the data scanned in {self.path} has no labels, so units have no class selectivity"
            )
        return class_selectivity(
            self.embeddings(name), labels, self.classes, name, bins=bins, threshold=threshold
        )

    def weight_histograms(self) -> dict[str, Histogram]:
        """Linear histograms of each weighted layer's weights, as scanned."""
        return load_weight_histograms(self.store.run_dir(self.run.id) / "weights.npz")

    # ------------------------------------------------------------------------------------------------------
    # layouts

    def layout(self, kind: str = "tsne", layer: str | None = None, **params: Any) -> np.ndarray:
        """A 2-D layout ``[N, 2]`` of ``layer``'s embeddings: 'tsne', 'umap' or 'pca' (``params`` go to
        :func:`deepscope.atlas.layouts.tsne` etc.). Computed once and stored in the workspace."""
        name = self._layer(layer).name
        if kind not in LAYOUTS:
            raise SettingError(f"unknown layout {kind!r}; choose one of {', '.join(LAYOUTS)}")
        return self._cached(
            kind, name, params, lambda: embedding_layout(self.embeddings(name), kind, **params)
        )

    def neighbors(
        self, layer: str | None = None, k: int = 10, metric: str = "euclidean"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``k`` nearest samples in ``layer``'s embedding space: (dataset indices, distances),
        each ``[N, k]``. Stored in the workspace."""
        name = self._layer(layer).name
        params = {"k": k, "metric": metric}
        stacked = self._cached(
            "neighbors",
            name,
            params,
            lambda: np.concatenate(
                [a.astype(np.float64) for a in nearest_neighbors(self.embeddings(name), k, metric)],
                axis=1,
            ),
        )
        rows, distances = stacked[:, :k].astype(np.int64), stacked[:, k:].astype(np.float32)
        return self.indices[rows], distances

    def image_grid(
        self, rows: int, columns: int, kind: str = "tsne", layer: str | None = None, seed: int = 0
    ) -> GridLayout:
        """The ``kind`` layout snapped to a ``rows x columns`` grid by linear assignment; ``cells`` hold rows of
        this workspace's arrays (-1: empty), so ``ws.thumbnails[cells]`` gives the pictures."""
        return image_grid(self.layout(kind, layer), rows, columns, seed)

    def _cached(self, kind: str, layer: str, params: dict[str, Any], compute) -> np.ndarray:
        if self.complete:
            found = self.store.find_layout(self.run.id, kind, layer, params)
            if found is not None:
                return np.load(found)
        array = compute()
        if self.complete and not self.store.read_only:  # on read-only storage it is computed, not kept
            self.store.save_layout(self.run.id, kind, layer, params, array)
        return array

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
    ) -> int:
        """Record feedback on a sample (``index``: dataset index) or a unit (``layer``, ``unit``)."""
        return self.store.add_feedback(kind, value, index=index, layer=layer, unit=unit, run_id=self.run.id)

    def feedback(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self.store.feedback(kind)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"Workspace({str(self.path)!r}, run {self.run.id} of {self.run.model} on {self.run.dataset}: "
            f"{len(self.indices)} samples, {len(self.layers)} layers, {state})"
        )


def open_workspace(path: str | Path, run: int | None = None) -> Workspace:
    """Open a scanned workspace directory (``run``: a run id, default the latest complete one).

    >>> import tempfile, deepscope as ds
    >>> ds.atlas.open_workspace(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    deepscope.errors.WorkspaceError: ... is not a deepscope workspace (no workspace.sqlite in it)
    """
    store = Store.open(path)
    return Workspace(store, store.run(run))
