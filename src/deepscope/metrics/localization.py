"""Localization: does the heat map point at the object? The pointing game (Zhang et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepscope.attribution.targets import TargetLike
from deepscope.metrics._common import MetricError, pixel_maps, prepare
from deepscope.metrics.registry import register
from deepscope.zoo.vision_model import VisionModel


def boxes_to_masks(
    boxes: torch.Tensor | Sequence[torch.Tensor | Sequence[Sequence[float]]], height: int, width: int
) -> torch.Tensor:
    """``[B,H,W]`` bool masks from boxes ``(x0, y0, x1, y1)`` in input pixels (x1, y1 exclusive): a ``[B,4]``
    tensor (one box per sample) or a list with ``[n_i, 4]`` boxes per sample (several objects of the class).

    >>> boxes_to_masks(torch.tensor([[1, 0, 3, 2]]), 3, 4).int()
    tensor([[[0, 1, 1, 0],
             [0, 1, 1, 0],
             [0, 0, 0, 0]]], dtype=torch.int32)
    """
    per_sample = [boxes[i : i + 1] for i in range(len(boxes))] if isinstance(boxes, torch.Tensor) else boxes
    rows = torch.arange(height)[:, None]
    columns = torch.arange(width)[None, :]
    masks = torch.zeros(len(per_sample), height, width, dtype=torch.bool)
    for index, sample_boxes in enumerate(per_sample):
        sample_boxes = torch.as_tensor(sample_boxes, dtype=torch.float64).reshape(-1, 4)
        for x0, y0, x1, y1 in sample_boxes.tolist():
            if x1 < x0 or y1 < y0:
                raise MetricError(f"box {(x0, y0, x1, y1)} of sample {index} is not (x0, y0, x1, y1)")
            masks[index] |= (columns >= x0) & (columns < x1) & (rows >= y0) & (rows < y1)
    return masks


@register(
    "pointing_game",
    family="localization",
    score="hit rate",
    per_sample=None,
    higher_is_better=True,
    reference="Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop",
    needs_objects=True,
)
def pointing_game(
    model: VisionModel | nn.Module | None,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    masks: torch.Tensor | None = None,
    boxes: torch.Tensor | Sequence | None = None,
    tolerance: float = 15.0,
) -> torch.Tensor:
    """Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop"): ``[B]`` 1.0 where the
    map's maximum lies within ``tolerance`` pixels (Euclidean) of the object, 0.0 where it does not, NaN for
    samples whose mask is empty (Zhang et al. leave those out; average with ``nanmean``).

    The object is given by ``masks`` (``[B,H,W]`` or ``[B,1,H,W]``, bool or 0/1, in input pixels) or ``boxes``
    (see :func:`boxes_to_masks`). Zhang et al. use a 15-pixel tolerance on 224-pixel images; ``tolerance=0``
    asks for the maximum on the object itself. The maximum is taken over per-pixel relevance (channel maps
    are summed over channels); where several pixels share it, any of them on the object counts as a hit.
    ``model`` and ``target`` are not used (the map already explains a class); they keep the signature of the
    other metrics.

    >>> import torch
    >>> maps = torch.zeros(2, 1, 8, 8); maps[0, 0, 1, 1] = 1; maps[1, 0, 6, 6] = 1
    >>> mask = torch.zeros(2, 8, 8, dtype=torch.bool); mask[:, :3, :3] = True
    >>> pointing_game(None, torch.zeros(2, 1, 8, 8), maps, masks=mask, tolerance=0)
    tensor([1., 0.])
    """
    x, maps = prepare(model, x, attributions)
    batch, _, height, width = x.shape
    if (masks is None) == (boxes is None):
        raise MetricError("the pointing game needs the objects: give masks or boxes (one of them)")
    if boxes is not None:
        if len(boxes) != batch:
            raise MetricError(f"{len(boxes)} box sets for a batch of {batch}")
        masks = boxes_to_masks(boxes, height, width)
    assert masks is not None
    masks = torch.as_tensor(masks).to(x.device)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape != (batch, height, width):
        raise MetricError(f"masks must be [B,H,W] = {[batch, height, width]}, got {list(masks.shape)}")
    objects = masks.bool().flatten(1)
    if tolerance < 0:
        raise MetricError(f"tolerance must be >= 0, got {tolerance}")
    relevance = pixel_maps(maps).flatten(1)
    peak = relevance.amax(1)
    # A hit: some pixel that holds the maximum is on the object (or within ``tolerance`` of it).
    if tolerance < 1:  # no neighbor is that close: the maximum must be on the object itself
        on_object = torch.where(objects, relevance, -torch.inf).amax(1)
        hits = (on_object >= peak).float()
    else:
        hits = _near(relevance == peak[:, None], objects, height, width, tolerance).float()
    hits[~objects.any(1)] = float("nan")
    return hits


def _near(
    points: torch.Tensor, objects: torch.Tensor, height: int, width: int, radius: float
) -> torch.Tensor:
    """``[B]``: whether any of ``points`` lies within Euclidean ``radius`` of ``objects`` (both ``[B,H*W]``
    bool), tested exactly on the disk of pixel offsets around each point (no dilation of the whole mask)."""
    reach = int(radius)
    device = objects.device
    steps = torch.arange(-reach, reach + 1, device=device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    inside = dy**2 + dx**2 <= radius**2
    dy, dx = dy[inside], dx[inside]
    padded = nn.functional.pad(objects.view(-1, height, width).to(torch.uint8), (reach,) * 4)
    sample, index = points.nonzero(as_tuple=True)
    rows, columns = index // width + reach, index % width + reach
    near = torch.zeros(objects.shape[0], dtype=torch.long, device=device)
    step = max(1, (1 << 22) // dy.numel())  # points per gather, to bound memory when many pixels tie
    for start in range(0, sample.numel(), step):
        part = slice(start, start + step)
        found = padded[sample[part, None], rows[part, None] + dy[None], columns[part, None] + dx[None]].any(1)
        near.index_add_(0, sample[part], found.long())
    return near > 0
