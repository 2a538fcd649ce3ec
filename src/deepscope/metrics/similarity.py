"""How alike two heat maps are: Spearman rank correlation and SSIM, batched, in torch.

Both compute in float64 (maps are small, and the variance terms of SSIM cancel badly in float32) on the
maps' device and return one value per pair ``[B]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepscope.metrics._common import MetricError


def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise MetricError(f"cannot compare maps of shapes {list(a.shape)} and {list(b.shape)}")
    if a.ndim < 2:
        raise MetricError(f"expected a batch of maps [B, ...], got shape {list(a.shape)}")
    return a.detach().double(), b.detach().to(a.device).double()


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N (float64) along the last dimension of ``[B,N]``; tied values share their average rank (as
    scipy's ``rankdata``)."""
    # The order among tied values does not matter (they share one rank), so the sort need not be stable.
    sorted_values, order = values.sort(dim=1)
    count = values.shape[1]
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    positions = torch.arange(count, device=values.device, dtype=torch.float64).expand_as(sorted_values)
    if bool(new_group.all()):  # no ties (maps of real-valued gradients): the rank is the sorted position
        return torch.empty_like(positions).scatter_(1, order, positions + 1)
    group = new_group.long().cumsum(1) - 1
    first = torch.full_like(sorted_values, float(count)).scatter_reduce(1, group, positions, "amin")
    last = torch.full_like(sorted_values, -1.0).scatter_reduce(1, group, positions, "amax")
    sorted_ranks = (first.gather(1, group) + last.gather(1, group)) / 2 + 1
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of flattened maps; NaN where a map is constant."""
    a, b = _pairs(a, b)
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of flattened maps ``[B, ...]`` -> ``[B]`` (average ranks for
    ties, as ``scipy.stats.spearmanr``); NaN where a map is constant.

    >>> import torch
    >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> round(spearman(a, a ** 3).item(), 9), round(spearman(a, -a).item(), 9)
    (1.0, -1.0)
    """
    a, b = _pairs(a, b)
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))


def against(
    reference: torch.Tensor, measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Callable:
    """``maps -> measure(reference, maps)``, for comparing many batches of maps with one reference (the
    randomization test compares the maps of every randomized model with the original ones): Spearman ranks the
    reference once."""
    if measure is not spearman:
        return lambda maps: measure(reference, maps)
    reference_ranks = average_ranks(reference.detach().double().flatten(1))

    def compare(maps: torch.Tensor) -> torch.Tensor:
        b = _pairs(reference, maps)[1]
        return pearson(reference_ranks, average_ranks(b.flatten(1)))

    return compare


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 7,
    data_range: torch.Tensor | float | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of each pair of maps ``[B,H,W]`` or ``[B,C,H,W]`` -> ``[B]``.

    The settings of ``skimage.metrics.structural_similarity`` (its defaults: a uniform ``window`` x ``window``
    window, sample covariances, K1 = 0.01, K2 = 0.03, the mean over the window positions that fit inside the
    image, and the mean over channels). ``data_range`` defaults to each pair's joint range
    ``max(a, b) - min(a, b)``, as in Adebayo et al.'s sanity checks and Quantus. A dimension of size 1 gets a
    window of 1 there, so ``[B,1,1,N]`` compares 1-D signals like skimage does.

    >>> import torch
    >>> a = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> ssim(a, a)
    tensor([1., 1.], dtype=torch.float64)
    """
    a, b = _pairs(a, b)
    if a.ndim == 3:
        a, b = a[:, None], b[:, None]
    if a.ndim != 4:
        raise MetricError(f"ssim compares [B,H,W] or [B,C,H,W] maps, got shape {list(a.shape)}")
    height, width = a.shape[-2:]
    window_h = 1 if height == 1 else window
    window_w = 1 if width == 1 else window
    if height < window_h or width < window_w or window < 1 or window % 2 == 0:
        raise MetricError(
            f"ssim needs an odd window no larger than the maps ({height}x{width}), got {window}"
        )
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], 1)
        data_range = both.amax(1) - both.amin(1)
    data_range = torch.as_tensor(data_range, dtype=torch.float64, device=a.device).reshape(-1, 1, 1, 1)
    batch, channels = a.shape[:2]
    stack = torch.stack([a, b, a * a, b * b, a * b], 1).flatten(0, 2)[:, None]
    means = nn.functional.avg_pool2d(stack, (window_h, window_w), stride=1)
    means = means.view(batch, 5, channels, *means.shape[-2:])
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = means.unbind(1)
    points = window_h * window_w
    correction = points / (points - 1) if points > 1 else 1.0
    var_a = correction * (mean_aa - mean_a * mean_a)
    var_b = correction * (mean_bb - mean_b * mean_b)
    cov = correction * (mean_ab - mean_a * mean_b)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    index = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / (
        (mean_a * mean_a + mean_b * mean_b + c1) * (var_a + var_b + c2)
    )
    return index.flatten(1).mean(1)


SIMILARITIES = {"spearman": spearman, "ssim": ssim, "pearson": pearson}
