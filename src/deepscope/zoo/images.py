"""Loading images from paths, PIL images or arrays, and the real photos bundled in scikit-image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepscope.errors import ImageError, SettingError, suggestion

ImageLike = str | os.PathLike | Image.Image | np.ndarray

# The pixel formats images are read into: 8 bits per channel, with or without alpha.
_READ_MODES = {"L", "LA", "RGB", "RGBA"}
# Modes PIL converts to RGB(A) without changing the picture.
_TO_RGB = {"CMYK": "RGB", "YCbCr": "RGB", "RGBX": "RGB", "RGBa": "RGBA", "P": None, "PA": "RGBA"}
# Keys in ``Image.info``: how many frames the file held (:func:`open_image`), the mode PIL opened it in.
_FRAMES = "deepscope_frames"
_OPENED_MODE = "deepscope_mode"
_ORIENTATION = 0x0112  # the EXIF orientation tag


def load_images(
    items: ImageLike | Sequence[ImageLike], mode: str = "RGB", convert: bool = False
) -> list[Image.Image]:
    """Paths, PIL images or uint8 arrays -> list of PIL images in ``mode`` ('RGB' or 'L'), each the picture an image
    viewer shows (see :func:`to_mode`).

    Nothing is converted silently where information would change: an image with transparency, a grayscale
    image asked for as RGB, a color image asked for as grayscale and a file of several frames raise
    :class:`ImageError` naming the file. ``convert=True`` converts them as image-folder datasets do (and the
    scan): transparency flattened onto white, grayscale replicated to RGB, color to luminance, the first frame.

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
    return [to_mode(image, mode, convert, where) for image, where in loaded]


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` the way dataset images are read (image folders, the scan, ``convert=True``):
    transparency flattened onto white, grayscale replicated to RGB, color to luminance, the first frame."""
    return to_mode(image, mode, convert=True)


def to_mode(image: Image.Image, mode: str, convert: bool = False, where: str = "the image") -> Image.Image:
    """``image`` as 8-bit ``mode`` ('RGB' or 'L') pixels showing the picture an image viewer shows.

    Whatever the mode PIL opened: 16-bit and 32-bit integer grayscale are scaled to 0-255 by their bit depth
    (values up to 255 stay as they are, up to 65535 are 16-bit), float grayscale in [0, 1] or [0, 255] likewise;
    bilevel, palette, CMYK and YCbCr images become L or RGB; the EXIF orientation is applied. What would change
    the picture's meaning needs ``convert=True`` and raises :class:`ImageError` naming ``where`` otherwise:
    transparency (flattened onto white), grayscale for an RGB model (replicated), color for a grayscale model
    (luminance), several frames (the first is read).

    >>> from PIL import Image
    >>> deep = Image.new("I;16", (4, 4), 65535)  # a 16-bit white
    >>> to_mode(deep, "L").getpixel((0, 0))
    255
    """
    if mode not in ("RGB", "L"):
        raise SettingError(f"mode must be 'RGB' or 'L', got {mode!r}")
    frames = image.info.get(_FRAMES, getattr(image, "n_frames", 1))
    if frames > 1 and not convert:
        raise ImageError(
            f"{where} holds {frames} frames (an animation or a stack); pass convert=True (--convert on the "
            "command line) to read its first frame, or save the frame you want as an image of its own"
        )
    if image.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even unrotated images: 3-70 us each
        image = ImageOps.exif_transpose(image)
    image = _eight_bit(image, where)
    if image.mode == mode:
        return image
    if image.mode in ("LA", "RGBA"):
        if not convert:
            raise ImageError(
                f"{where} has transparency (mode {image.info.get(_OPENED_MODE, image.mode)}); flatten it onto "
                "a background first, e.g. Image.alpha_composite(Image.new('RGBA', im.size, 'white'), "
                "im.convert('RGBA')).convert('RGB'), or pass convert=True (--convert on the command line) to "
                "flatten it onto white"
            )
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA")).convert("RGB" if mode == "RGB" else "L")
        return image if image.mode == mode else image.convert(mode)
    if convert:
        return image.convert(mode)
    opened = image.info.get(_OPENED_MODE, image.mode)
    if mode == "RGB":
        raise ImageError(
            f"{where} is grayscale (mode {opened}) but RGB was asked for; pass mode='L' for a grayscale model, or convert=True "
            "(--convert on the command line) to replicate the channel"
        )
    raise ImageError(
        f"{where} is a color image (mode {opened}) but grayscale was asked for; pass mode='RGB', or convert=True (--convert on "
        "the command line) to keep its luminance"
    )


def _eight_bit(image: Image.Image, where: str) -> Image.Image:
    """The image in L, LA, RGB or RGBA with the picture unchanged (see :func:`to_mode`)."""
    original = image.mode
    if original in _READ_MODES:
        return image
    if original == "1":
        return image.convert("L")
    if original in _TO_RGB:
        target = _TO_RGB[original]
        if target is None:  # a palette: with or without a transparent entry
            target = "RGBA" if "transparency" in image.info else "RGB"
        converted = image.convert(target)
    elif original.startswith("I") or original == "F":
        converted = Image.fromarray(_grayscale_bytes(np.asarray(image), original, where))
    else:
        raise ImageError(
            f"{where} has mode {original!r} ({_MODE_NAMES.get(original, 'not an image of pixels a viewer shows')}), "
            "which deepscope cannot show as the picture it is; convert it to RGB or grayscale first"
        )
    converted.info[_OPENED_MODE] = original
    return converted


_MODE_NAMES = {"LAB": "L*a*b* color", "HSV": "hue, saturation, value"}


def _grayscale_bytes(values: np.ndarray, mode: str, where: str) -> np.ndarray:
    """16-bit, 32-bit integer or float grayscale values -> uint8 0-255 as a viewer maps them."""
    if values.size == 0:
        return values.astype(np.uint8)
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(values).all():
        raise ImageError(f"{where} holds NaN or infinite pixel values (mode {mode})")
    if mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif low >= 0 and high <= 255 and not mode.startswith("I;16"):
        scale = 1.0
    elif low >= 0 and high <= 65535:
        scale = 255.0 / 65535.0
    else:
        raise ImageError(
            f"{where} holds {mode} pixel values from {low:g} to {high:g}, outside the 8-bit, 16-bit or [0, 1] "
            "ranges a viewer maps to gray levels; scale them to 0-255 first"
        )
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


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
        return open_image(path)
    raise ImageError(
        f"item {index} is a {type(item).__name__}; expected a path, a PIL image or a uint8 array"
    )


def open_image(path: str | os.PathLike) -> Image.Image:
    """The first frame of an image file, fully read (the file is closed), with the number of frames the file
    holds noted in its ``info``; a file PIL cannot decode (truncated, not an image, a decompression bomb)
    raises :class:`ImageError` naming it."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
            image.info[_FRAMES] = getattr(opened, "n_frames", 1)
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file PIL can read: it cannot be decoded") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path} is refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports broken files as OSError (truncated), SyntaxError (broken PNG chunks) or ValueError (bad
        # headers).
        raise ImageError(f"{path} cannot be decoded: {type(error).__name__}: {error}") from None
    return image


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
