"""Loading images from paths, PIL images or arrays, and the real photos bundled in scikit-image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepscope.errors import ImageError, SettingError, suggestion

ImageLike = str | os.PathLike | Image.Image | np.ndarray

# Modes that convert to RGB without losing anything.
_LOSSLESS_TO_RGB = {"P", "CMYK", "YCbCr"}
_GRAYSCALE = {"L", "1", "I", "I;16", "F"}


def load_images(
    items: ImageLike | Sequence[ImageLike], mode: str = "RGB", convert: bool = False
) -> list[Image.Image]:
    """Paths, PIL images or uint8 arrays -> list of PIL images in ``mode`` ('RGB' or 'L').

    Nothing is converted silently where information would change: an RGBA image (the alpha would be
    dropped), a grayscale image asked for as RGB or a color image asked for as grayscale raises
    :class:`ImageError` naming the file. ``convert=True`` converts them as image-folder datasets do (and the
    scan): grayscale replicated to RGB, alpha dropped, color to luminance.

    >>> import numpy as np, deepscope as ds
    >>> ds.load_images(np.zeros((8, 8, 3), np.uint8))[0].size
    (8, 8)
    """
    if mode not in ("RGB", "L"):
        raise SettingError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if isinstance(items, (str, os.PathLike, Image.Image)) or (
        isinstance(items, np.ndarray) and items.ndim in (2, 3) and items.dtype == np.uint8
    ):
        items = [items]
    loaded = [(_load_one(item, index), _where(item, index)) for index, item in enumerate(items)]
    if convert:
        return [convert_mode(image, mode) for image, _ in loaded]
    return [_check_mode(image, mode, where) for image, where in loaded]


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` the way dataset images are read (image folders, the scan, ``convert=True``):
    grayscale replicated to RGB, alpha dropped, color to luminance."""
    return image if image.mode == mode else image.convert(mode)


def _where(item: ImageLike, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(Path(item))
    return f"{'array' if isinstance(item, np.ndarray) else 'image'} {index}"


def _load_one(item: ImageLike, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return image_from_array(item, f"array {index}")
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            hint = (
                suggestion(path.name, [p.name for p in path.parent.iterdir()]) if path.parent.is_dir() else ""
            )
            raise ImageError(f"image file not found: {path}.{hint}")
        if path.is_dir():
            raise ImageError(f"{path} is a directory, not an image file")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except UnidentifiedImageError:
            raise ImageError(f"{path} is not an image file PIL can read") from None
        except OSError as error:
            raise ImageError(f"{path} could not be read as an image: {error}") from None
        return image
    raise ImageError(
        f"item {index} is a {type(item).__name__}; expected a path, a PIL image or a uint8 array"
    )


def image_from_array(array: np.ndarray, where: str = "the array") -> Image.Image:
    """uint8 pixels [H,W] or [H,W,C] with 1, 3 or 4 channels -> PIL image (L, RGB or RGBA). Other arrays are
    refused: their meaning (pixels in [0,1]? a normalized input? channels first?) cannot be told from them."""
    channels = array.shape[2] if array.ndim == 3 else None
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or channels not in (None, 1, 3, 4):
        raise ImageError(
            f"{where} is {array.dtype} {list(array.shape)}; expected uint8 pixels (0-255) [H,W] or [H,W,C] with 1, "
            "3 or 4 channels"
        )
    return Image.fromarray(np.ascontiguousarray(array[:, :, 0] if channels == 1 else array))


def _check_mode(image: Image.Image, mode: str, where: str) -> Image.Image:
    if image.mode == mode:
        return image
    if mode == "RGB" and image.mode in _LOSSLESS_TO_RGB and "transparency" not in image.info:
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        raise ImageError(
            f"{where} has an alpha channel (mode {image.mode}); flatten it onto a background first, "
            "e.g. Image.alpha_composite(Image.new('RGBA', im.size, 'white'), im).convert('RGB'), or drop the "
            "alpha with convert=True (--convert on the command line)"
        )
    if mode == "L" and image.mode in _GRAYSCALE:
        return image.convert("L")
    if mode == "RGB" and image.mode in _GRAYSCALE:
        raise ImageError(
            f"{where} is grayscale (mode {image.mode}) but RGB was asked for; "
            "pass mode='L' for a grayscale model, or convert=True (--convert on the command line) to replicate "
            "the channel"
        )
    if mode == "L":
        raise ImageError(
            f"{where} is a color image (mode {image.mode}) but grayscale was asked for; "
            "pass mode='RGB', or convert=True (--convert on the command line) to drop the color"
        )
    raise ImageError(f"{where} has mode {image.mode!r}, which cannot be read as {mode}")


# Photos bundled inside scikit-image (no download): name -> loader in skimage.data.
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")


def samples(names: Sequence[str] | None = None) -> dict[str, Image.Image]:
    """The real photos bundled in scikit-image, as RGB PIL images keyed by name.

    >>> import deepscope as ds
    >>> sorted(ds.samples())[:2]
    ['astronaut', 'chelsea']
    """
    import skimage.data

    names = list(SAMPLE_PHOTOS if names is None else names)
    photos = {}
    for name in names:
        if name not in SAMPLE_PHOTOS:
            raise ImageError(f"unknown sample photo {name!r}; bundled: {', '.join(SAMPLE_PHOTOS)}")
        array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        photos[name] = Image.fromarray(array)
    return photos
