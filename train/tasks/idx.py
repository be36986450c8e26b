"""Reader and writer for the IDX format of the MNIST files (optionally gzip-compressed).

Layout: two zero bytes, a type code, the number of dimensions n, then n big-endian uint32
sizes, then the data in big-endian row-major order.
"""

import gzip
import os
import struct

import numpy as np

from arch.errors import ConfigError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}


def _open(path: str | os.PathLike, mode: str):
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file at `path`, in native byte order."""
    try:
        with _open(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile) as e:  # BadGzipFile is an OSError: caught first
        raise ConfigError(f"{path} is a damaged or truncated gzip file: {e}") from e
    except OSError as e:  # missing, a directory, no permission
        raise ConfigError(f"{path} cannot be read: {e.strerror or e}") from e
    if not data:
        raise ConfigError(f"{path} is empty, not an IDX file")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise ConfigError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ConfigError(f"{path} is truncated inside its header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ConfigError(
            f"{path}: header says shape {shape} ({expected} bytes), file holds {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzip-compressed if `path` ends in .gz)."""
    array = np.asarray(array)
    code = IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of {list(IDX_TYPES.values())}"
        )
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with _open(path, "wb") as f:
        f.write(header + array.astype(IDX_TYPES[code]).tobytes())
