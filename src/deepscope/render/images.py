"""Tensors -> pictures: scaling to [0,1], tiling, PNG encoding. The only place where values get normalized."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import torch
from PIL import Image

from deepscope.errors import ImageError


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """A [C,H,W] or [H,W] tensor with values in [0,1] (C = 1 or 3) -> PIL image."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8))


def scale_each(tiles: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """Scale each tile of [N,C,h,w] to [0,1] on its own (contrast normalization per tile).

    ``symmetric=True`` maps 0 to 0.5 and the largest absolute value to 0 or 1 (signed weights).
    """
    flat = tiles.detach().float().flatten(1)
    if symmetric:
        extent = flat.abs().amax(1).clamp_min(1e-12)[:, None]
        scaled = 0.5 + 0.5 * flat / extent
    else:
        low = flat.amin(1, keepdim=True)
        high = flat.amax(1, keepdim=True)
        scaled = (flat - low) / (high - low).clamp_min(1e-12)
    return scaled.view_as(tiles)


def tile(
    tiles: torch.Tensor,
    columns: int | None = None,
    pad: int = 1,
    scale: int = 1,
    background: float = 1.0,
) -> Image.Image:
    """Lay [N,C,h,w] tiles with values in [0,1] (C = 1 or 3) out in a grid; ``scale`` enlarges pixels."""
    if tiles.ndim != 4 or tiles.shape[1] not in (1, 3):
        raise ImageError(f"expected tiles of shape [N,1|3,h,w], got {list(tiles.shape)}")
    count, channels, height, width = tiles.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = torch.full(
        (channels, rows * (height + pad) + pad, columns * (width + pad) + pad),
        background,
        dtype=torch.float32,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        canvas[:, top : top + height, left : left + width] = tiles[index].detach().float().cpu()
    picture = to_pil(canvas)
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(picture: Image.Image) -> str:
    """A PNG data URI, for self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def thumbnail(picture: Image.Image, size: int = 160) -> Image.Image:
    copy = picture.copy()
    copy.thumbnail((size, size))
    return copy
