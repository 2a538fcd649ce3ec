"""Pictures of units: DeepVis-style activation grids, filter tiles, top-patch rows with their projections, and
labeled image strips (feature visualizations, inversions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from deepscope.errors import ImageError, SettingError, UnitError
from deepscope.render.images import scale_each, tile


def activation_grid(
    activations: torch.Tensor,
    order: str = "mean",
    columns: int | None = None,
    tile_size: int = 48,
    labels: bool = True,
    limit: int | None = None,
) -> Image.Image:
    """One image's activation maps ``[C,h,w]`` (or ``[1,C,h,w]``) as a grid, the DeepVis toolbox view
    (Yosinski et al. 2015): each channel scaled to its own range (black = its minimum, white = its maximum),
    ordered by mean activation (``order="mean"``, strongest first) or by index (``"index"``), with the channel
    index written on each tile. ``limit`` keeps the first channels after ordering.

    >>> import torch
    >>> activation_grid(torch.rand(16, 10, 10)).size  # 4x4 tiles of 40 pixels
    (165, 165)
    """
    if activations.ndim == 4:
        if activations.shape[0] != 1:
            raise ImageError(f"activation_grid shows one image; got a batch of {activations.shape[0]}")
        activations = activations[0]
    if activations.ndim != 3:
        raise ImageError(f"expected activation maps [C,h,w], got shape {list(activations.shape)}")
    if order not in ("mean", "index"):
        raise SettingError(f"order must be 'mean' or 'index', got {order!r}")
    maps = activations.detach().float().cpu()
    indices = list(range(maps.shape[0]))
    if order == "mean":
        means = maps.flatten(1).mean(1)
        indices = sorted(indices, key=lambda c: (-float(means[c]), c))
    if limit is not None:
        indices = indices[:limit]
    tiles = scale_each(maps[indices][:, None])
    tiles = _resize(tiles, tile_size)
    return _labeled_tile(tiles, [str(c) for c in indices] if labels else None, columns)


def filter_grid(
    weight: torch.Tensor,
    tile_size: int = 32,
    max_filters: int = 64,
    max_inputs: int = 16,
    labels: bool = True,
) -> Image.Image:
    """Convolution kernels ``[out, in, kh, kw]`` as tiles, contrast-normalized per filter: with 3 input channels,
    one RGB tile per filter (each scaled to its own range); otherwise one row per filter and one gray tile per
    input channel, all tiles of a filter sharing one symmetric scale (gray = 0). The filter index labels each
    row (or tile).

    >>> import torch
    >>> filter_grid(torch.randn(4, 3, 5, 5), tile_size=20).size  # 2x2 RGB tiles of 20 pixels
    (43, 43)
    """
    if weight.ndim != 4:
        raise ImageError(f"expected kernels [out, in, kh, kw], got shape {list(weight.shape)}")
    kernels = weight.detach().float().cpu()[:max_filters]
    count, inputs = kernels.shape[:2]
    if inputs == 3:
        tiles = _resize(scale_each(kernels), tile_size)
        return _labeled_tile(tiles, [str(i) for i in range(count)] if labels else None, None)
    kernels = kernels[:, :max_inputs]
    extent = kernels.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None, None]
    scaled = 0.5 + 0.5 * kernels / extent
    tiles = _resize(scaled.flatten(0, 1)[:, None], tile_size)
    row_labels = []
    for out in range(count):
        row_labels.extend([str(out)] + [""] * (kernels.shape[1] - 1))
    return _labeled_tile(tiles, row_labels if labels else None, kernels.shape[1])


def patch_grid(
    patches,
    units: Sequence[int] | None = None,
    tile_size: int = 48,
    labels: bool = True,
) -> Image.Image:
    """Top patches of a :class:`~deepscope.units.TopPatches`: one row per unit with its ``k`` crops (pixels, as
    they are) and, where the result holds projections, the ``k`` projections beside them (each scaled to its own
    range, signed: gray = 0), as in Zeiler & Fergus 2014's figures. Rows are labeled with the unit index.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> hits = ds.units.top_patches(vm, ds.datasets.mnist5k("test"), "conv1", units=[0, 1], k=3)["conv1"]
    >>> patch_grid(hits, tile_size=20).size  # 2 rows of 3 crops, 5x5 pixels enlarged 4 times
    (64, 43)
    """
    if patches.crops is None:
        raise SettingError("these top patches have no crops; call top_patches(..., crops=True)")
    rows = list(range(len(patches.units))) if units is None else [_row(patches, u) for u in units]
    k = patches.crops.shape[1]
    tiles, names = [], []
    for row in rows:
        crops = patches.crops[row].detach().float().cpu().clamp(0, 1)
        tiles.append(crops)
        names.extend([f"{int(patches.units[row])}"] + [""] * (k - 1))
        if patches.projections is not None:
            projected = patches.projections[row].detach().float().cpu()
            tiles.append(scale_each(projected, symmetric=True))
            names.extend([""] * k)
    channels = max(t.shape[1] for t in tiles)
    stacked = torch.cat([t.expand(-1, channels, -1, -1) for t in tiles])
    columns = k * (2 if patches.projections is not None else 1)
    return _labeled_tile(_resize(stacked, tile_size), names if labels else None, columns)


def image_strip(
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    tile_size: int = 112,
    columns: int | None = None,
) -> Image.Image:
    """Pixel images ``[N,C,H,W]`` in [0, 1] side by side (clamped, not rescaled), each with an optional caption:
    feature visualizations, an inversion strip.

    >>> import torch
    >>> image_strip(torch.rand(3, 3, 8, 8), ["a", "b", "c"], tile_size=16).size
    (52, 18)
    """
    if images.ndim != 4:
        raise ImageError(f"expected images [N,C,H,W], got shape {list(images.shape)}")
    tiles = _resize(images.detach().float().cpu().clamp(0, 1), tile_size)
    return _labeled_tile(tiles, captions, columns or len(tiles))


def _row(patches, unit: int) -> int:
    matches = (patches.units == unit).nonzero()
    if matches.numel() == 0:
        raise UnitError(f"unit {unit} is not among the collected units {patches.units.tolist()}")
    return int(matches[0, 0])


def _resize(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """Enlarge (nearest neighbor, whole multiples, so pixels stay square) or shrink (area) to about ``size``."""
    height, width = tiles.shape[-2:]
    if max(height, width) <= size:
        factor = max(1, size // max(height, width))
        return tiles.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    scale = size / max(height, width)
    return F.interpolate(
        tiles, size=(max(1, round(height * scale)), max(1, round(width * scale))), mode="area"
    )


def _labeled_tile(tiles: torch.Tensor, names: Sequence[str] | None, columns: int | None) -> Image.Image:
    picture = tile(tiles, columns=columns, pad=1)
    if not names:
        return picture
    picture = picture.convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    count, _, height, width = tiles.shape
    columns = columns or (picture.width - 1) // (width + 1)
    for index, name in enumerate(names[:count]):
        if not name:
            continue
        row, column = divmod(index, columns)
        left, top = 1 + column * (width + 1), 1 + row * (height + 1)
        box = draw.textbbox((left + 1, top), name, font=font)
        draw.rectangle((box[0] - 1, box[1], box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text((left + 1, top), name, fill=(255, 255, 0), font=font)
    return picture


__all__ = ["activation_grid", "filter_grid", "image_strip", "patch_grid"]
