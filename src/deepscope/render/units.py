"""Pictures of units: DeepVis-style activation grids, filter tiles, top-patch rows with their projections, visual
concepts, labeled image strips (feature visualizations, inversions) and the two inversions compared."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure as MatplotlibFigure
from PIL import Image, ImageDraw, ImageFont

from deepscope.errors import ImageError, SettingError, UnitError
from deepscope.render.images import scale_each, tile
from deepscope.units.concepts import Concepts
from deepscope.units.inverter import InversionComparison


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
    one RGB tile per filter (each scaled to its own range); with 1, one gray tile per filter on a square grid,
    scaled symmetrically (gray = 0, black and white the filter's largest negative and positive weight); otherwise
    one row per filter and one gray tile per input channel, all tiles of a filter sharing one symmetric scale.
    The filter index labels each row (or tile). The weights of a linear layer that reads pixels, reshaped to the
    image (``ds.units.filters`` on it), show the same way: one image-sized tile per unit (Erhan et al. 2009).

    >>> import torch
    >>> filter_grid(torch.randn(4, 3, 5, 5), tile_size=20).size  # 2x2 RGB tiles of 20 pixels
    (43, 43)
    >>> filter_grid(torch.randn(300, 1, 28, 28), tile_size=28, max_filters=100).size  # 10x10 digit-sized tiles
    (291, 291)
    """
    if weight.ndim != 4:
        raise ImageError(f"expected kernels [out, in, kh, kw], got shape {list(weight.shape)}")
    kernels = weight.detach().float().cpu()[:max_filters]
    count, inputs = kernels.shape[:2]
    if inputs in (1, 3):
        tiles = _resize(scale_each(kernels, symmetric=inputs == 1), tile_size)
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


def concept_grid(
    found: Concepts,
    order: str = "size",
    limit: int | None = None,
    tile_size: int = 40,
) -> Image.Image:
    """Visual concepts (:func:`deepscope.units.concepts`): one row per concept with its nearest patches (crops of
    the receptive field, nearest first), as in Wang et al. 2015's figures. Each row's caption gives the concept's
    index, its share of the layer's feature vectors and, with labels, its majority class and purity; the title
    gives the layer and the overall purity: ``#3 11.6% | 8 98%`` is concept 3, holding 11.6% of the vectors,
    98% of them from images of class 8. Rows in ``order``: ``"size"`` (largest first), ``"purity"`` (purest
    first) or ``"index"``; ``limit`` keeps the first rows.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> found = ds.units.concepts(vm, ds.datasets.mnist5k("test"), "fc2", k=6, patches=5)
    >>> picture = concept_grid(found, tile_size=28)
    >>> picture.height  # a title line of 16 pixels, then 6 rows of 28-pixel tiles with 1-pixel gaps
    191
    """
    if found.nearest.crops is None:
        raise SettingError("these concepts have no crops; call concepts(..., crops=True)")
    if order not in ("size", "purity", "index"):
        raise SettingError(f"order must be 'size', 'purity' or 'index', got {order!r}")
    purity = found.concept_purity
    if order == "purity" and purity is None:
        raise SettingError("order='purity' needs labels; these concepts were found on data without labels")
    rows = list(range(found.k))
    if order == "size":
        rows.sort(key=lambda j: (-int(found.sizes[j]), j))
    elif order == "purity":
        rows.sort(key=lambda j: (-float(purity[j].nan_to_num(-1.0)), j))
    rows = rows[:limit]
    crops = found.nearest.crops[rows].detach().float().cpu().clamp(0, 1)
    columns = crops.shape[1]
    grid = tile(_resize(crops.flatten(0, 1), tile_size), columns=columns, pad=1).convert("RGB")
    captions = []
    for j in rows:
        caption = f"#{j} {float(found.sizes[j]) / max(found.vectors, 1):.1%}"
        if purity is not None and int(found.majority[j]) >= 0:
            caption += f" | {found.class_name(int(found.majority[j]))} {float(purity[j]):.0%}"
        captions.append(caption)
    title = f"{found.layer}: {found.k} concepts, {found.vectors:,} vectors"
    if found.purity is not None:
        title += f", purity {found.purity:.1%}"
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    text_height = max(measure.textbbox((0, 0), "Ag%", font=font)[3], 1)
    margin = 6 + max(int(measure.textlength(caption, font=font)) for caption in captions)
    header = text_height + 4
    width = max(margin + grid.width, int(measure.textlength(title, font=font)) + 8)
    picture = Image.new("RGB", (width, header + grid.height), (255, 255, 255))
    picture.paste(grid, (margin, header))
    draw = ImageDraw.Draw(picture)
    draw.text((2, 1), title, fill=(0, 0, 0), font=font)
    row_height = (grid.height - 1) // len(rows)
    for index, caption in enumerate(captions):
        top = header + 1 + index * row_height + max(0, (row_height - 1 - text_height) // 2)
        draw.text((2, top), caption, fill=(0, 0, 0), font=font)
    return picture


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


def inversion_comparison(comparison: InversionComparison, tile_size: int = 56) -> Image.Image:
    """Decoder inversion against optimization-based inversion (:func:`deepscope.units.compare_inversions`): on
    the left the images (top row), then for each layer the decoder's reconstructions and the optimization's; on
    the right, per layer, the mean relative image error of each method and the time per image (log scale).

    >>> import torch
    >>> from deepscope.units.inverter import InversionComparison
    >>> images = torch.rand(2, 3, 1, 8, 8)
    >>> comparison = InversionComparison(["conv1", "conv2"], images[0], images, images, torch.rand(2, 3),
    ...                                  torch.rand(2, 3), torch.tensor([1e-4, 2e-4]), torch.tensor([0.5, 0.6]))
    >>> inversion_comparison(comparison).mode
    'RGB'
    """
    layers = comparison.layers
    rows = [comparison.original]
    captions = ["input"]
    for index, layer in enumerate(layers):
        rows += [comparison.decoded[index], comparison.optimized[index]]
        captions += [f"{layer} decoder", f"{layer} optimization"]
    columns = len(comparison.original)
    stacked = torch.cat([row.detach().float().cpu().clamp(0, 1) for row in rows])
    grid = tile(_resize(stacked, tile_size), columns=columns, pad=1).convert("RGB")
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    margin = 6 + max(int(measure.textlength(caption, font=font)) for caption in captions)
    images = Image.new("RGB", (margin + grid.width, grid.height), (255, 255, 255))
    images.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(images)
    row_height = (grid.height - 1) // len(rows)
    for index, caption in enumerate(captions):
        draw.text((2, 1 + index * row_height + row_height // 2 - 6), caption, fill=(0, 0, 0), font=font)

    figure = MatplotlibFigure(figsize=(6.4, 2.6), dpi=100)
    error_axes, time_axes = figure.subplots(1, 2)
    positions = np.arange(len(layers))
    for offset, values, label, color in (
        (-0.2, comparison.decoder_error, "decoder", "#1f77b4"),
        (0.2, comparison.optimization_error, "optimization", "#ff7f0e"),
    ):
        error_axes.bar(
            positions + offset, values.float().mean(1).cpu().numpy(), 0.4, label=label, color=color
        )
    for offset, values, color in (
        (-0.2, comparison.decoder_seconds, "#1f77b4"),
        (0.2, comparison.optimization_seconds, "#ff7f0e"),
    ):
        time_axes.bar(positions + offset, values.float().cpu().numpy(), 0.4, color=color)
    error_axes.set_title("relative image error", fontsize=9)
    time_axes.set_title("seconds per image", fontsize=9)
    time_axes.set_yscale("log")
    error_axes.legend(fontsize=8)
    for axes in (error_axes, time_axes):
        axes.set_xticks(positions, layers, fontsize=8)
        axes.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    chart = Image.open(buffer).convert("RGB")
    picture = Image.new(
        "RGB", (images.width + chart.width, max(images.height, chart.height)), (255, 255, 255)
    )
    picture.paste(images, (0, 0))
    picture.paste(chart, (images.width, 0))
    return picture


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


__all__ = [
    "activation_grid",
    "concept_grid",
    "filter_grid",
    "image_strip",
    "inversion_comparison",
    "patch_grid",
]
