"""Heat maps -> pictures: channel reduction, percentile clipping, colormaps, overlays, method x image grids.

Signed maps (gradients, integrated gradients, occlusion, LRP) are drawn with a diverging colormap centered
on zero (red positive, blue negative), scaled by a percentile of their absolute values; CAMs are drawn as
their positive part (the papers' ReLU) with a sequential colormap, as are maps without negative values.
Overlays blend each pixel's color, in proportion to its magnitude, into a gray copy of the photo, so
that zero leaves the photo visible and the colors read the same over any picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from deepscope.attribution.base import method_info, methods
from deepscope.errors import ImageError, SettingError
from deepscope.render.images import png_bytes
from deepscope.zoo.vision_model import Preprocessing

REDUCTIONS = ("sum", "abs_sum", "l2", "max_abs")
DIVERGING, SEQUENTIAL = "RdBu_r", "inferno"


class Figure:
    """A rendered picture (``.image``, a PIL image) that notebooks display (``_repr_png_``)."""

    def __init__(self, image: Image.Image):
        self.image = image

    def _repr_png_(self) -> bytes:
        return png_bytes(self.image)

    def save(self, path: str | Path) -> Path:
        """Write the picture (PNG unless the suffix says otherwise)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(path)
        return path

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def __repr__(self) -> str:
        return f"Figure({self.image.width}x{self.image.height})"


def reduce_channels(attribution: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """``[C,H,W]`` -> ``[H,W]``: 'sum' (signed), 'abs_sum', 'l2' (norm over channels) or 'max_abs'
    (Simonyan et al.'s saliency map); one channel is returned as is.

    >>> reduce_channels(torch.tensor([[[1.0]], [[-3.0]]]), "max_abs")
    tensor([[3.]])
    """
    if how not in REDUCTIONS:
        raise SettingError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {how!r}")
    if attribution.ndim != 3:
        raise ImageError(f"expected one map [C,H,W], got shape {list(attribution.shape)}")
    if attribution.shape[0] == 1:
        return attribution[0]
    if how == "sum":
        return attribution.sum(0)
    if how == "abs_sum":
        return attribution.abs().sum(0)
    if how == "l2":
        return attribution.pow(2).sum(0).sqrt()
    return attribution.abs().amax(0)


def _family(method: str | None) -> str | None:
    if method is None:
        return None
    return method_info(method).family if method != "guided_grad_cam" else "gradient"


def normalize(
    values: torch.Tensor, signed: bool, clip: float = 99.5
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``[H,W]`` values -> (colormap position in [0,1], magnitude in [0,1], the values at the ends of the scale).

    Signed: ``v / percentile(|v|, clip)`` clipped to [-1, 1], zero at 0.5. Sequential: from the minimum to
    the ``clip`` percentile. A lower ``clip`` brings out the weaker values of a sparse map (a gradient).
    """
    if not 0 < clip <= 100:
        raise SettingError(f"clip is a percentile in (0, 100], got {clip}")
    array = values.detach().double().cpu().numpy()
    if signed:
        extent = float(np.percentile(np.abs(array), clip)) or float(np.abs(array).max()) or 1.0
        scaled = np.clip(array / extent, -1.0, 1.0)
        return (scaled + 1) / 2, np.abs(scaled), (-extent, extent)
    low = float(array.min())
    high = float(np.percentile(array, clip))
    if high <= low:
        high = float(array.max())
    scaled = np.clip((array - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(array)
    return scaled, scaled, (low, high)


def _color(position: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps[cmap](position)[..., :3]


def _as_image_array(image: Image.Image | torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB float array [H,W,3] in [0,1] of ``size`` (H, W) from a PIL image or a [C,H,W] tensor in [0,1]."""
    image = _as_pil(image)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255


def _as_pil(image: Image.Image | torch.Tensor | np.ndarray) -> Image.Image:
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise ImageError(f"image tensor must be [C,H,W] with C = 1 or 3, got {list(tensor.shape)}")
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        array = (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ImageError(
            f"image must be a PIL image or a [C,H,W] tensor in [0,1], got {type(image).__name__}"
        )
    return image.convert("RGB")


# What the colors of a signed map say: sensitivity maps (how the score would change) and attributions (evidence).
MEANINGS = {
    "sensitivity": "red: raising the pixel raises the class score; blue: lowers it",
    "perturbation": "red: the class score drops without this region; blue: it rises",
    "attribution": "red: evidence for the class; blue: against it",
    None: "red: positive; blue: negative",
}
SEQUENTIAL_MEANING = "bright: strongest evidence for the class"
# Photos larger than this (longer side, pixels) are drawn at this size.
LARGEST_SIDE = 1024


def heatmap(
    attribution: torch.Tensor,
    image: Image.Image | torch.Tensor | None = None,
    *,
    method: str | None = None,
    reduce: str = "sum",
    signed: bool | None = None,
    cmap: str | None = None,
    alpha: float = 0.85,
    clip: float = 99.5,
    preprocessing: Preprocessing | None = None,
    colorbar: bool = True,
) -> Figure:
    """One heat map as a picture, over ``image`` when given, with a color bar saying what the colors mean.

    ``image``: the model's input pixels (``[C,H,W]`` in [0,1], such as ``vm.pixels(images)[i]``, or a PIL image of
    the map's size), or the original photo with ``preprocessing=vm.preprocessing``: the map is then drawn over
    the part of the photo the model saw (the center crop, outlined), at the photo's own size and aspect.

    ``attribution``: ``[C,H,W]``, ``[1,H,W]``, ``[H,W]`` or a batch of one. ``method`` (a registry name)
    picks the display: CAMs as their positive part in a sequential colormap, other methods diverging
    when they have negative values; ``signed`` overrides. ``reduce`` combines channels ('sum', 'abs_sum',
    'l2', 'max_abs'); ``clip`` is the percentile of the values drawn at full color (lower it to see the weaker
    values of a sparse gradient map); ``alpha`` the largest opacity of the overlay.

    >>> import torch, deepscope as ds
    >>> figure = ds.render.heatmap(torch.randn(3, 32, 32), torch.rand(3, 32, 32), colorbar=False)
    >>> figure.size, figure._repr_png_()[:4]
    ((32, 32), b'\\x89PNG')
    """
    values = _one_map(attribution)
    if values.ndim == 3:
        values = reduce_channels(values, reduce)
    family = _family(method)
    if family == "cam":
        values = values.clamp(min=0)
    if signed is None:
        signed = family != "cam" and bool((values < 0).any())
    position, magnitude, ends = normalize(values, signed, clip)
    colormap = cmap or (DIVERGING if signed else SEQUENTIAL)
    outline = None
    if image is not None and preprocessing is not None:
        photo = _as_pil(image)
        scale = min(1.0, LARGEST_SIDE / max(photo.size))
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BILINEAR)
        box = tuple(round(side * scale) for side in preprocessing.crop_box(*_original_size(image)))
        position, magnitude = _placed(position, magnitude, box, photo.size, 0.5 if signed else 0.0)
        base_pixels, outline = np.asarray(photo, dtype=np.float64) / 255, box
    elif image is not None:
        base_pixels = _as_image_array(image, tuple(values.shape))
    color = _color(position, colormap)
    if image is None:
        picture = color
    else:
        # A gray copy of the photo: colors of the map stay readable over any picture.
        base = 0.25 + 0.6 * (base_pixels @ np.array([0.299, 0.587, 0.114]))[..., None]
        weight = alpha * magnitude[..., None]
        picture = base * (1 - weight) + color * weight
    drawn = Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8))
    if outline is not None:
        ImageDraw.Draw(drawn).rectangle(
            (outline[0], outline[1], outline[2] - 1, outline[3] - 1), outline="white"
        )
    if colorbar:
        meaning = MEANINGS[_meaning_of(method, family)] if signed else SEQUENTIAL_MEANING
        drawn = _with_colorbar(drawn, colormap, ends, signed, meaning)
    return Figure(drawn)


def _meaning_of(method: str | None, family: str | None) -> str | None:
    if method is None:
        return None
    if method_info(method).sensitivity:
        return "sensitivity"
    return "perturbation" if family == "perturbation" else "attribution"


def _original_size(image: Image.Image | torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(width, height) of a picture."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray):
        return (image.shape[1], image.shape[0])
    return (int(image.shape[-1]), int(image.shape[-2]))


def _placed(
    position: np.ndarray, magnitude: np.ndarray, box: tuple[int, ...], size: tuple[int, int], neutral: float
) -> tuple[np.ndarray, np.ndarray]:
    """The map's colormap positions and magnitudes resized into ``box`` of a ``size`` (width, height) picture;
    outside the box the position is ``neutral`` and the magnitude zero (the photo shows through)."""
    left, top, right, bottom = box
    stacked = torch.from_numpy(np.stack([position, magnitude]))[None]
    resized = torch.nn.functional.interpolate(
        stacked, size=(max(bottom - top, 1), max(right - left, 1)), mode="bilinear", align_corners=False
    )[0].numpy()
    width, height = size
    placed = np.stack([np.full((height, width), neutral), np.zeros((height, width))])
    # the part of the box inside the picture (a crop larger than the photo reaches outside it)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, height), min(right, width)
    placed[:, y0:y1, x0:x1] = resized[:, y0 - top : y1 - top, x0 - left : x1 - left]
    return placed[0], placed[1]


def _with_colorbar(
    picture: Image.Image, colormap: str, ends: tuple[float, float], signed: bool, meaning: str
) -> Image.Image:
    """The picture above a color bar from ``ends[0]`` to ``ends[1]``, with its values and what they mean."""
    width = max(picture.width, 240)
    bar_height, text_height = 10, 12
    canvas = Image.new("RGB", (width, picture.height + bar_height + 2 * text_height + 6), "white")
    canvas.paste(picture, ((width - picture.width) // 2, 0))
    top = picture.height + 3
    bar = _color(np.linspace(0, 1, width - 8)[None].repeat(bar_height, 0), colormap)
    canvas.paste(Image.fromarray((bar * 255).round().astype(np.uint8)), (4, top))
    draw = ImageDraw.Draw(canvas)
    low, high = ends
    labels = [f"{low:.3g}", "0", f"{high:+.3g}"] if signed else [f"{low:.3g}", f"{high:.3g}"]
    for index, label in enumerate(labels):
        x = 4 + index * (width - 8) / (len(labels) - 1)
        text_width = draw.textlength(label)
        draw.text(
            (min(max(x - text_width / 2, 0), width - text_width), top + bar_height), label, fill="black"
        )
    draw.text((4, top + bar_height + text_height), _fit(meaning, width - 8), fill="black")
    return canvas


def _one_map(attribution: torch.Tensor) -> torch.Tensor:
    if not isinstance(attribution, torch.Tensor):
        raise ImageError(f"a heat map is a tensor, got {type(attribution).__name__}")
    if attribution.ndim == 4:
        if attribution.shape[0] != 1:
            raise ImageError(
                f"heatmap draws one map, got a batch of {attribution.shape[0]}; index it or use ds.render.grid"
            )
        attribution = attribution[0]
    if attribution.ndim not in (2, 3):
        raise ImageError(f"expected a map [C,H,W] or [H,W], got shape {list(attribution.shape)}")
    if attribution.numel() == 0:
        raise ImageError(f"the map is empty (shape {list(attribution.shape)})")
    finite = torch.isfinite(attribution)
    if not bool(finite.all()):
        raise ImageError(
            f"the map holds {int((~finite).sum())} NaN or infinite values of {attribution.numel()}; a map with "
            "them has no scale to draw (the inputs or the model's outputs were not finite)"
        )
    return attribution.detach()


def grid(
    maps: Mapping[str, torch.Tensor],
    images: Sequence[Image.Image] | torch.Tensor | None = None,
    *,
    labels: Sequence[str] | None = None,
    cell: int = 128,
    reduce: str = "sum",
    alpha: float = 0.85,
    clip: float = 99.5,
    legend: bool = True,
) -> Figure:
    """Methods x images: one row per image (the image first when given), one column per method, with the
    method names on top, ``labels`` (e.g. predicted classes) under the images and, with ``legend``, what the
    colors mean at the bottom (each map is scaled to its own range). ``maps`` maps method
    names to ``[B,...]`` batches (what ``ds.explain`` returns); ``images`` are PIL images or ``[B,C,H,W]``
    pixels in [0,1].

    >>> import torch, deepscope as ds
    >>> maps = {"saliency": torch.randn(2, 3, 16, 16), "grad_cam": torch.rand(2, 1, 16, 16)}
    >>> ds.render.grid(maps, torch.rand(2, 3, 16, 16), cell=32, legend=False).size
    (104, 86)
    """
    if not maps:
        raise ImageError("no maps to draw")
    batches = {len(batch) for batch in maps.values()}
    if len(batches) != 1:
        raise ImageError(f"the maps have different batch sizes {sorted(batches)}")
    (count,) = batches
    if images is not None and len(images) != count:
        raise ImageError(f"{len(images)} images for maps of {count}")
    columns = list(maps)
    header, footer, pad = 16, 14 if labels else 0, 2
    with_image = images is not None
    width = (len(columns) + with_image) * (cell + pad) + pad
    height = header + count * (cell + footer + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    titles = (["image"] if with_image else []) + columns
    for index, title in enumerate(titles):
        draw.text((pad + index * (cell + pad) + 2, 2), _fit(title, cell), fill="black")
    for row in range(count):
        top = header + row * (cell + footer + pad)
        tiles: list[Image.Image] = []
        if with_image:
            tiles.append(_thumbnail(images[row], cell))
        for name in columns:
            background = images[row] if with_image else None
            method = name if _known(name) else None
            figure = heatmap(
                maps[name][row],
                background,
                method=method,
                reduce=reduce,
                alpha=alpha,
                clip=clip,
                colorbar=False,
            )
            tiles.append(figure.image.resize((cell, cell), Image.BILINEAR))
        for index, tile in enumerate(tiles):
            canvas.paste(tile, (pad + index * (cell + pad), top))
        if labels:
            draw.text((pad + 2, top + cell + 1), _fit(str(labels[row]), cell * 2), fill="black")
    if legend:
        canvas = _with_legend(canvas)
    return Figure(canvas)


def _with_legend(picture: Image.Image) -> Image.Image:
    """The picture above the two color scales a grid uses and what they mean."""
    rows = [
        (DIVERGING, "signed maps: blue negative, white 0, red positive (each map at its own scale)"),
        (SEQUENTIAL, "CAMs and positive maps: dark 0, bright strongest"),
    ]
    row_height = 24
    text = max(ImageDraw.Draw(picture).textlength(meaning) for _, meaning in rows)
    width = max(picture.width, round(70 + text + 8))
    canvas = Image.new("RGB", (width, picture.height + row_height * len(rows) + 4), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, (colormap, meaning) in enumerate(rows):
        top = picture.height + 4 + index * row_height
        bar = _color(np.linspace(0, 1, 60)[None].repeat(8, 0), colormap)
        canvas.paste(Image.fromarray((bar * 255).round().astype(np.uint8)), (4, top))
        draw.text((70, top - 2), meaning, fill="black")
    return canvas


def _known(name: str) -> bool:
    return name in {info.name for info in methods()}


def _thumbnail(image: Image.Image | torch.Tensor, cell: int) -> Image.Image:
    array = _as_image_array(image, _size_of(image))
    return Image.fromarray((array * 255).round().astype(np.uint8)).resize((cell, cell), Image.BILINEAR)


def _size_of(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return (image.height, image.width)
    return (int(image.shape[-2]), int(image.shape[-1]))


def _fit(text: str, pixels: int) -> str:
    limit = max(4, math.floor(pixels / 6.2))
    return text if len(text) <= limit else text[: limit - 2] + ".."
