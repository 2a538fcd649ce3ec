"""k-means, batch and streaming: greedy k-means++ seeding (Arthur & Vassilvitskii 2007), Lloyd's algorithm over points
held in memory, and mini-batch k-means (Sculley 2010, "Web-scale k-means clustering", WWW) over points that
arrive in batches and are not kept.

The mini-batch update gives each center its own rate, one over the number of points it has been assigned so far,
so that a center is the running mean of every point ever assigned to it (the per-center rate of Sculley's
algorithm 1, applied to a whole batch at once as scikit-learn's ``MiniBatchKMeans`` does). Its memory is the
centers and their counts, whatever the number of points.
"""

from __future__ import annotations

import math

import torch

from deepscope.errors import SettingError


def squared_distances(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``[n, k]`` squared Euclidean distances from each point ``[n, d]`` to each center ``[k, d]``, from one
    matrix product (``|p|^2 - 2 p.c + |c|^2``, clamped at 0 against rounding).

    >>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0]])).flatten().tolist()
    [0.0, 25.0]
    """
    product = points @ centers.T
    return (points.pow(2).sum(1, keepdim=True) - 2 * product + centers.pow(2).sum(1)).clamp_min_(0)


def kmeans_plus_plus(points: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    """``clusters`` starting centers ``[clusters, d]`` picked among ``points`` ``[n, d]`` by greedy k-means++
    (Arthur & Vassilvitskii 2007, section 6; scikit-learn's default): the first uniformly; then each time
    ``2 + log(clusters)`` candidates drawn with probability proportional to their squared distance to the nearest
    center so far, of which the one leaving the smallest sum of squared distances is kept (uniform draws once
    every point coincides with a center). ``generator`` (a CPU generator) fixes the picks.

    >>> points = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    >>> centers = kmeans_plus_plus(points, 2, torch.Generator().manual_seed(0))
    >>> sorted(round(float(c)) for c in centers)  # one center in each group
    [0, 10]
    """
    count = points.shape[0]
    if not 1 <= clusters <= count:
        raise SettingError(f"cannot seed {clusters} clusters from {count} points")
    trials = 2 + int(math.log(clusters))
    norms = points.pow(2).sum(1)

    def distances_to(indices: torch.Tensor) -> torch.Tensor:
        """``[n, len(indices)]`` squared distances from every point to the points ``indices``."""
        chosen = indices.to(points.device)
        return (norms[:, None] - 2 * (points @ points[chosen].T) + norms[chosen]).clamp_min_(0)

    first = torch.randint(count, (1,), generator=generator)
    picked = [int(first)]
    nearest = distances_to(first)[:, 0]
    for _ in range(1, clusters):
        # Draws proportional to the weights: the first index whose running sum passes a uniform fraction of the
        # total (one pass, where torch.multinomial costs milliseconds on a few ten thousand weights).
        running = nearest.double().cumsum(0).cpu()
        total = float(running[-1])
        if total > 0:
            thresholds = torch.rand(trials, dtype=torch.float64, generator=generator) * total
            candidates = torch.searchsorted(running, thresholds, side="right").clamp_max_(count - 1)
        else:
            candidates = torch.randint(count, (trials,), generator=generator)
        after = torch.minimum(nearest[:, None], distances_to(candidates))
        best = int(after.sum(0).argmin())
        picked.append(int(candidates[best]))
        nearest = after[:, best].contiguous()
    return points[picked].clone()


def kmeans(points: torch.Tensor, clusters: int, seed: int = 0, iterations: int = 100) -> torch.Tensor:
    """Cluster labels ``[n]`` by Lloyd's algorithm from k-means++ seeds; every cluster keeps at least one point.

    >>> points = torch.tensor([[0.0, 0.0], [0.2, 0.0], [5.0, 5.0], [5.0, 5.2]])
    >>> kmeans(points, 2).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    True
    """
    generator = torch.Generator().manual_seed(seed)
    points = points.double()
    centers = kmeans_plus_plus(points, clusters, generator)
    labels = torch.cdist(points, centers).argmin(1)
    for _ in range(iterations):
        for cluster in range(clusters):
            members = labels == cluster
            if not members.any():  # re-seed an empty cluster with the point farthest from its center
                farthest = torch.cdist(points, centers).min(1).values.argmax()
                labels[farthest] = cluster
                members = labels == cluster
            centers[cluster] = points[members].mean(0)
        updated = torch.cdist(points, centers).argmin(1)
        if torch.equal(updated, labels):
            break
        labels = updated
    for cluster in range(clusters):
        if not (labels == cluster).any():
            labels[torch.cdist(points, centers).min(1).values.argmax()] = cluster
    return labels


class MiniBatchKMeans:
    """Streaming k-means from given starting centers ``[k, d]``: :meth:`update` with each batch of points moves
    every center to the running mean of all points assigned to it so far (assignments by the centers as they
    were when the batch arrived). ``centers`` and ``counts`` (points assigned per center) are the state.

    >>> clustering = MiniBatchKMeans(torch.tensor([[0.0], [10.0]]))
    >>> clustering.update(torch.tensor([[1.0], [2.0], [9.0]]))
    >>> clustering.update(torch.tensor([[3.0]]))
    >>> clustering.centers.flatten().tolist(), clustering.counts.tolist()
    ([2.0, 9.0], [3, 1])
    """

    def __init__(self, centers: torch.Tensor):
        if centers.ndim != 2 or centers.shape[0] < 1:
            raise SettingError(f"starting centers must be [k, d] with k >= 1, got {list(centers.shape)}")
        self.centers = centers.detach().clone()
        self.counts = torch.zeros(centers.shape[0], dtype=torch.int64, device=centers.device)

    def assign(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels [n], squared distances [n, k])`` of ``points`` to the current centers."""
        distances = squared_distances(points, self.centers)
        return distances.argmin(1), distances

    def update(self, points: torch.Tensor) -> None:
        """Assign a batch of points ``[n, d]`` and move each center that received some."""
        if points.ndim != 2 or points.shape[1] != self.centers.shape[1]:
            raise SettingError(
                f"points must be [n, {self.centers.shape[1]}] like the centers, got {list(points.shape)}"
            )
        labels, _ = self.assign(points)
        clusters = self.centers.shape[0]
        sums = torch.zeros_like(self.centers).index_add_(0, labels, points.to(self.centers.dtype))
        received = torch.bincount(labels, minlength=clusters)
        self.counts += received
        # c + (sum - n c) / N is (N - n) / N * c + sum / N: the mean over the N points assigned so far.
        rate = (1.0 / self.counts.clamp_min(1)).to(self.centers.dtype)[:, None]
        self.centers += (sums - received.to(self.centers.dtype)[:, None] * self.centers) * rate
