"""The binary array format of the workbench API ("DSA1"): a small JSON header, then the raw values.

Bytes 0-3 are the magic ``DSA1``, bytes 4-7 the length ``L`` of the JSON header (uint32, little-endian), then
the header ``{"dtype": ..., "shape": [...]}`` padded with spaces so that the values start on a multiple of 8,
then the values, little-endian, in C order. A typed array in the browser reads them without a copy
(``web/lib/arrays.js`` is the decoder there).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepscope.errors import SettingError, SettingTypeError

MAGIC = b"DSA1"
MEDIA_TYPE = "application/octet-stream"
# dtype name in the header -> the little-endian NumPy dtype of the values
DTYPES = {"float32": "<f4", "uint8": "|u1", "int32": "<i4", "uint16": "<u2"}


def encode_array(array: np.ndarray | Any, extra: Mapping[str, Any] | None = None) -> bytes:
    """An array (float32, uint8, int32 or uint16; other floats become float32, other integers int32 when they
    fit) as DSA1 bytes; ``extra`` adds keys to the header (the heat map's ``meta``).

    >>> data = encode_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> data[:4], len(data) % 4
    (b'DSA1', 0)
    >>> decode_array(data)[0].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    array = np.asarray(array)
    name = _dtype_name(array)
    header: dict[str, Any] = {"dtype": name, "shape": list(array.shape)}
    if extra:
        clash = set(extra) & set(header)
        if clash:
            raise SettingError(f"extra header keys {sorted(clash)} would replace the array's own")
        header.update(extra)
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    padded = text + b" " * (-(8 + len(text)) % 8)
    values = np.ascontiguousarray(array, dtype=DTYPES[name])
    return MAGIC + struct.pack("<I", len(padded)) + padded + values.tobytes()


def decode_array(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """DSA1 bytes -> (the array, the whole header). The inverse of :func:`encode_array` (see its example)."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise SettingError("not a DSA1 array: the first four bytes are not 'DSA1'")
    (length,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + length])
    if header.get("dtype") not in DTYPES:
        raise SettingError(f"DSA1 dtype {header.get('dtype')!r} is none of {', '.join(DTYPES)}")
    shape = tuple(int(side) for side in header["shape"])
    values = np.frombuffer(data, dtype=DTYPES[header["dtype"]], offset=8 + length)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise SettingError(
            f"DSA1 data holds {values.size} values, the header's shape {list(shape)} needs more"
        )
    return values.reshape(shape), header


def _dtype_name(array: np.ndarray) -> str:
    kind = array.dtype
    if kind == np.uint8 or kind == np.bool_:
        return "uint8"
    if kind == np.uint16:
        return "uint16"
    if np.issubdtype(kind, np.floating):
        return "float32"
    if np.issubdtype(kind, np.integer):
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise SettingError("integer values beyond int32 cannot travel as DSA1")
        return "int32"
    raise SettingTypeError(f"DSA1 carries numbers; got an array of {kind}")
