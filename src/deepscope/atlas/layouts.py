"""2-D layouts of embeddings (PCA, t-SNE, UMAP), image grids and nearest-neighbor lists.

All functions take a NumPy array ``[N, D]`` and return NumPy arrays; the :class:`~deepscope.atlas.Workspace`
caches their results in the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepscope.errors import SettingError

LAYOUTS = ("pca", "tsne", "umap")


def _matrix(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SettingError(f"{name} must be a [N, D] array with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise SettingError(f"{name} contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def pca(x: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Projection onto the top principal components (scikit-learn's exact SVD), ``[N, n_components]``.

    >>> import numpy as np
    >>> pca(np.random.default_rng(0).normal(size=(50, 5))).shape
    (50, 2)
    """
    from sklearn.decomposition import PCA

    x = _matrix(x)
    return PCA(n_components=n_components, svd_solver="full").fit_transform(x).astype(np.float32)


def tsne(x: np.ndarray, perplexity: float = 30.0, seed: int = 0, **options: Any) -> np.ndarray:
    """t-SNE (van der Maaten & Hinton 2008) with openTSNE's FFT-accelerated gradients (Poličar et al. 2019;
    Linderman et al. 2019), openTSNE's defaults (PCA initialization, exaggeration phase), ``[N, 2]``.
    ``options`` go to ``openTSNE.TSNE`` (e.g. ``n_jobs``, ``metric``).

    >>> import numpy as np
    >>> tsne(np.random.default_rng(0).normal(size=(60, 5)), perplexity=10).shape
    (60, 2)
    """
    from openTSNE import TSNE

    x = _matrix(x)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    embedding = TSNE(n_components=2, perplexity=perplexity, random_state=seed, **options).fit(x)
    return np.asarray(embedding, dtype=np.float32)


# Up to this many points, UMAP's neighbor graph comes from an exact search (below), for these metrics (the
# ones scikit-learn and umap-learn both know by these names, with no parameters).
EXACT_UMAP_NEIGHBORS = 20_000
EXACT_UMAP_METRICS = ("euclidean", "l2", "manhattan", "l1", "cityblock", "cosine", "correlation", "chebyshev")


def umap(
    x: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, **options: Any
) -> np.ndarray:
    """UMAP (McInnes, Healy & Melville 2018) with umap-learn, ``[N, 2]``; a fixed ``seed`` makes it
    reproducible (and single-threaded). ``options`` go to ``umap.UMAP``.

    Up to ``EXACT_UMAP_NEIGHBORS`` points (for the metrics in ``EXACT_UMAP_METRICS``), the neighbor lists
    come from an exact scikit-learn search (:func:`umap_neighbors`); umap-learn searches exactly itself only
    below 4,096 points and otherwise approximately with pynndescent, whose numba compilation made the first
    UMAP of a process take 38 s on the 5,000 LeNet embeddings (2 cores). With the exact lists it takes 9 s.
    """
    import warnings

    import umap as umap_learn

    x = _matrix(x)
    n_neighbors = min(n_neighbors, len(x) - 1)
    exact = options.get("metric", "euclidean") in EXACT_UMAP_METRICS and "precomputed_knn" not in options
    if exact and len(x) <= EXACT_UMAP_NEIGHBORS:
        indices, distances = umap_neighbors(x, n_neighbors, options.get("metric", "euclidean"))
        options["precomputed_knn"] = (indices, distances, None)
    with warnings.catch_warnings():
        # umap-learn warns that a random_state disables its parallelism: that is the point of the seed; and that
        # neighbor lists handed to it come without a search index, which only its transform() would use.
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*not an NNDescent object.*")
        reducer = umap_learn.UMAP(
            n_components=2,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            random_state=seed,
            **options,
        )
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def umap_neighbors(
    x: np.ndarray, n_neighbors: int, metric: str = "euclidean"
) -> tuple[np.ndarray, np.ndarray]:
    """The neighbor lists umap-learn builds itself for fewer than 4,096 points, from an exact scikit-learn
    search: each row's ``n_neighbors`` nearest points, itself included, with float32 distances. A point's
    distance to itself is set to exactly 0: the search computes it as ``|x|^2 - 2 x.x + |x|^2``, which rounds
    to about 1e-6, and UMAP would take that for the distance to the nearest other point, which changes the
    whole graph.

    >>> import numpy as np
    >>> indices, distances = umap_neighbors(np.array([[0.0], [1.0], [3.0]]), 2)
    >>> indices.tolist(), distances.tolist()
    ([[0, 1], [1, 0], [2, 1]], [[0.0, 1.0], [0.0, 1.0], [0.0, 2.0]])
    """
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=n_neighbors, metric=metric).fit(x).kneighbors(x)
    distances = distances.astype(np.float32)
    distances[indices == np.arange(len(x))[:, None]] = 0.0
    return indices, distances


def layout(x: np.ndarray, kind: str, **params: Any) -> np.ndarray:
    """Dispatch to :func:`pca`, :func:`tsne` or :func:`umap` by name.

    >>> import numpy as np
    >>> layout(np.random.default_rng(0).normal(size=(20, 4)), "pca").shape
    (20, 2)
    """
    functions = {"pca": pca, "tsne": tsne, "umap": umap}
    if kind not in functions:
        raise SettingError(f"unknown layout {kind!r}; choose one of {', '.join(LAYOUTS)}")
    return functions[kind](x, **params)


@dataclass(frozen=True)
class GridLayout:
    """Points assigned to the cells of a ``rows x columns`` grid: ``cells[r, c]`` is the row (into the
    points given) shown in that cell, or -1 for an empty cell. ``chosen`` are the rows placed."""

    cells: np.ndarray
    chosen: np.ndarray
    cost: float


def image_grid(points: np.ndarray, rows: int, columns: int, seed: int = 0) -> GridLayout:
    """Assign 2-D points to a regular grid so that the grid keeps the layout's neighborhoods: the assignment
    of points to cell centers (both scaled to the unit square) with the least total squared distance, solved
    exactly as a linear assignment problem (scipy's ``linear_sum_assignment``, the Jonker-Volgenant
    algorithm). With more points than cells, a random subset (``seed``) of ``rows * columns`` points is placed.

    >>> import numpy as np
    >>> grid = image_grid(np.array([[0, 0], [1, 1], [0, 1], [1, 0]]), 2, 2)
    >>> grid.cells.tolist()
    [[2, 1], [0, 3]]
    """
    # Imported here: scipy.optimize costs half a second of every `import deepscope` otherwise.
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise SettingError(f"points must be [N, 2], got shape {points.shape}")
    if rows < 1 or columns < 1:
        raise SettingError(f"rows and columns must be >= 1, got {rows} x {columns}")
    cells = rows * columns
    chosen = np.arange(len(points))
    if len(points) > cells:
        chosen = np.sort(np.random.default_rng(seed).choice(len(points), size=cells, replace=False))
    placed = points[chosen]
    low, high = placed.min(0), placed.max(0)
    unit = (placed - low) / np.where(high > low, high - low, 1.0)
    # Row 0 at the top: flip y so the grid reads like the scatter plot.
    unit[:, 1] = 1.0 - unit[:, 1]
    ys, xs = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(columns) + 0.5) / columns, indexing="ij")
    centers = np.stack([xs.ravel(), ys.ravel()], axis=1)
    cost = cdist(unit, centers, "sqeuclidean")
    assigned_points, assigned_cells = linear_sum_assignment(cost)
    grid = np.full(cells, -1, dtype=np.int64)
    grid[assigned_cells] = chosen[assigned_points]
    return GridLayout(grid.reshape(rows, columns), chosen, float(cost[assigned_points, assigned_cells].sum()))


def nearest_neighbors(x: np.ndarray, k: int = 10, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """For each row, the ``k`` nearest other rows (self excluded; ties by lower index) and their distances,
    each ``[N, k]``, by exact search (scikit-learn's ``NearestNeighbors``, brute force or trees).

    >>> import numpy as np
    >>> nearest_neighbors(np.array([[0.0], [1.0], [3.0]]), k=1)[0].ravel().tolist()
    [1, 0, 1]
    """
    from sklearn.neighbors import NearestNeighbors

    x = _matrix(x)
    if not 1 <= k < len(x):
        raise SettingError(f"k must be between 1 and {len(x) - 1} (rows minus one), got {k}")
    finder = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(x)
    distances, indices = finder.kneighbors(x)
    # Drop each row itself (it is not always in column 0 when duplicates share distance 0).
    rows = np.arange(len(x))[:, None]
    keep = indices != rows
    first_k = np.cumsum(keep, axis=1) <= k
    mask = keep & first_k
    return (
        indices[mask].reshape(len(x), k).astype(np.int64),
        distances[mask].reshape(len(x), k).astype(np.float32),
    )
