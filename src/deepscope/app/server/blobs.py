"""Content-addressed pictures: PNG files named by the sha256 of their bytes, served with immutable caching."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from PIL import Image

from deepscope.app.server.problems import NotFoundError
from deepscope.render.images import png_bytes

_NAME = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """PNG blobs on disk under ``folder`` (nothing held in memory, so the server's memory does not grow with
    them). ``put`` returns the URL path ``/api/blobs/<sha256>.png``.

    >>> import tempfile
    >>> blobs = BlobStore(tempfile.mkdtemp())
    >>> url = blobs.put_picture(Image.new("RGB", (2, 2)))
    >>> url.startswith("/api/blobs/") and blobs.path(url.split("/")[-1][:-4]).is_file()
    True
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.folder / f"{digest}.png"
        if not path.is_file():
            temporary = path.with_suffix(f".{id(data)}.tmp")
            temporary.write_bytes(data)
            temporary.replace(path)
        return f"/api/blobs/{digest}.png"

    def put_picture(self, picture: Image.Image) -> str:
        return self.put(png_bytes(picture))

    def path(self, digest: str) -> Path:
        """The file of blob ``digest``; an unknown one is a :class:`NotFoundError`."""
        path = self.folder / f"{digest}.png"
        if not _NAME.match(digest) or not path.is_file():
            raise NotFoundError(f"no blob {digest!r}; blob URLs come from the server's other answers")
        return path
