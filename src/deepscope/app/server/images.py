"""The images the workbench shows and explains: the bundled photos, uploads (checked and capped) and dataset
samples, each named by an id (see docs/workbench-api.md, "Image ids")."""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from deepscope.app.server.problems import NotFoundError, UploadTooLargeError
from deepscope.errors import ImageError
from deepscope.zoo.images import SAMPLE_PHOTOS, samples

PHOTO_PREFIX = "photo:"
SAMPLE_PREFIX = "sample:"
UPLOAD_SUFFIXES = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "GIF": ".gif",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
}


@dataclass(frozen=True)
class ImageRecord:
    """What the image list says about an image."""

    id: str
    name: str
    source: str  # "bundled", "upload" or "dataset"
    width: int
    height: int


@dataclass(frozen=True)
class UploadLimits:
    """Caps on an upload: its size in bytes and its pixels (width x height)."""

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000


def decode_upload(data: bytes, limits: UploadLimits, name: str = "the upload") -> Image.Image:
    """The image in ``data``, fully decoded, or a clear error: :class:`UploadTooLargeError` over the caps (the
    pixel count is read from the header, before decoding), :class:`ImageError` for an empty file, a file that
    is not an image, a truncated one, or a decompression bomb.

    >>> decode_upload(b"", UploadLimits())
    Traceback (most recent call last):
    ...
    deepscope.errors.ImageError: the upload is an empty file (0 bytes); choose an image file
    """
    if not data:
        raise ImageError(f"{name} is an empty file (0 bytes); choose an image file")
    if len(data) > limits.max_bytes:
        raise UploadTooLargeError(
            f"{name} is {len(data) / 1e6:.1f} MB; this server takes images up to {limits.max_bytes / 1e6:.0f} MB "
            "(--max-upload-mb)"
        )
    try:
        with warnings.catch_warnings():
            # PIL warns between its limit and twice it; refuse those as bombs as well.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height <= limits.max_pixels:
                    opened.load()
                    image = opened.copy()
                    image.info["deepscope_format"] = opened.format
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image file PIL can read: it cannot be decoded") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{name} is refused as a decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # PIL reports a truncated file as OSError, broken chunks as SyntaxError, bad headers as ValueError.
        raise ImageError(
            f"{name} cannot be decoded ({type(error).__name__}: {error}); is the file complete?"
        ) from None
    if width * height > limits.max_pixels:
        raise UploadTooLargeError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels; this server takes images up to "
            f"{limits.max_pixels / 1e6:.0f} megapixels (--max-megapixels); shrink it first"
        )
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name} is {image.width}x{image.height} pixels; an image needs at least one pixel")
    return image


class ImageLibrary:
    """Bundled photos and uploads (dataset samples belong to their model). Uploads are kept on disk under
    ``folder`` (named by the sha256 of their bytes, so they are listed again after a restart) and their decoded
    pictures in a cache of at most ``cached_pixels`` pixels, so memory does not grow with the uploads."""

    def __init__(self, folder: str | Path, limits: UploadLimits, cached_pixels: int = 100_000_000):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._cached_pixels = cached_pixels
        self._pictures: OrderedDict[str, Image.Image] = OrderedDict()
        self._uploads: dict[str, ImageRecord] = {}
        self._photos: dict[str, Image.Image] | None = None
        self._lock = threading.Lock()
        for path in sorted(self.folder.iterdir()):
            if len(path.stem) == 64 and path.suffix in UPLOAD_SUFFIXES.values():
                try:
                    with Image.open(path) as opened:
                        width, height = opened.size
                except (OSError, UnidentifiedImageError):
                    continue  # a file someone else put there
                self._uploads[path.stem] = ImageRecord(path.stem, path.name, "upload", width, height)

    def photos(self) -> dict[str, Image.Image]:
        with self._lock:
            if self._photos is None:
                self._photos = samples()
            return self._photos

    def records(self) -> list[ImageRecord]:
        """The bundled photos, then the uploads in the order they came."""
        photos = [
            ImageRecord(f"{PHOTO_PREFIX}{name}", name, "bundled", *picture.size)
            for name, picture in self.photos().items()
        ]
        return photos + list(self._uploads.values())

    def add(self, data: bytes, filename: str | None) -> ImageRecord:
        """Check and keep an upload; its id is the sha256 of its bytes (the same file twice is one image)."""
        image = decode_upload(data, self.limits, f"upload {filename!r}" if filename else "the upload")
        digest = hashlib.sha256(data).hexdigest()
        suffix = UPLOAD_SUFFIXES.get(image.info.get("deepscope_format") or "", ".png")
        path = self.folder / f"{digest}{suffix}"
        if not path.is_file():
            if suffix == ".png" and image.info.get("deepscope_format") != "PNG":
                image.save(path, format="PNG")  # a format without a listed suffix is kept as PNG
            else:
                path.write_bytes(data)
        record = ImageRecord(digest, filename or path.name, "upload", image.width, image.height)
        with self._lock:
            self._uploads[digest] = record
            self._remember(digest, image)
        return record

    def picture(self, image_id: str) -> Image.Image:
        """The picture of a bundled photo or an upload (dataset samples: ask their model)."""
        if image_id.startswith(PHOTO_PREFIX):
            name = image_id[len(PHOTO_PREFIX) :]
            photos = self.photos()
            if name not in photos:
                raise NotFoundError(
                    f"no bundled photo {name!r}; the photos are {', '.join(PHOTO_PREFIX + n for n in SAMPLE_PHOTOS)}"
                )
            return photos[name]
        with self._lock:
            if image_id in self._pictures:
                self._pictures.move_to_end(image_id)
                return self._pictures[image_id]
            record = self._uploads.get(image_id)
        if record is None:
            raise NotFoundError(
                f"no image {image_id!r}: image ids are photo:NAME, sample:MODEL:INDEX, or the id an upload "
                "answered (GET /api/images lists them)"
            )
        with Image.open(self.folder / record.name) as opened:
            opened.load()
            image = opened.copy()
        with self._lock:
            self._remember(image_id, image)
        return image

    def record(self, image_id: str) -> ImageRecord:
        for record in self.records():
            if record.id == image_id:
                return record
        raise NotFoundError(f"no image {image_id!r}; GET /api/images lists them")

    def _remember(self, image_id: str, image: Image.Image) -> None:
        """Keep the decoded picture, forgetting the least recently used ones beyond ``cached_pixels`` in all (the
        latest one is always kept)."""
        self._pictures[image_id] = image
        self._pictures.move_to_end(image_id)
        total = sum(picture.width * picture.height for picture in self._pictures.values())
        while total > self._cached_pixels and len(self._pictures) > 1:
            _, oldest = self._pictures.popitem(last=False)
            total -= oldest.width * oldest.height
