"""A 2-D matrix inside a .npy or .safetensors file, read a block of rows at a time.

Owns parsing the two headers (never unpickling: an object array is refused from its header), the
checks of a user's file (shape, dtype, order, truncation) and positioned reads of contiguous rows
into a fresh tensor in the file's own dtype. Nothing is memory-mapped: a long-lived map of a large
file keeps the pages it touched resident, so reads go through ``readinto`` and memory stays
bounded by the rows asked for. It must not know about shards, stores or training.
"""

from __future__ import annotations

import ast
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saeseeds.errors import DataError

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
NPY_DTYPES = {"<f8": torch.float64, "<f4": torch.float32, "<f2": torch.float16}
_NPY_MAGIC = b"\x93NUMPY"
READ_BLOCK = 1 << 24  # bytes per read call


@dataclass(frozen=True)
class MatrixFile:
    """``rows`` x ``cols`` values of ``dtype``, C-ordered, from ``offset`` bytes into ``path``."""

    path: Path
    offset: int
    dtype: torch.dtype
    rows: int
    cols: int

    @property
    def row_bytes(self) -> int:
        return self.cols * self.dtype.itemsize

    def read_rows(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) as a new ``[stop - start, cols]`` tensor in the file's dtype."""
        out = torch.empty(stop - start, self.cols, dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.offset + start * self.row_bytes)
            read_into(handle, out, self.path)
        return out


def read_into(handle, out: Tensor, path: Path, digest=None) -> None:  # noqa: ANN001 - a file
    """Fill ``out`` from ``handle``'s current position; update ``digest`` with the bytes read."""
    view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled : filled + READ_BLOCK])
        if not count:
            raise DataError(
                f"{path} is truncated: it ends {len(view) - filled} bytes before the rows its "
                "header announces."
            )
        if digest is not None:
            digest.update(view[filled : filled + count])
        filled += count


def open_matrix(path: Path, key: str | None) -> MatrixFile:
    """The matrix in a user's .npy or .safetensors file, checked from its header alone."""
    try:
        matrix = _open_npy(path) if path.suffix == ".npy" else _open_safetensors(path, key)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error) as error:
        raise DataError(f"Cannot read activations from {path}: {error}") from error
    if matrix.rows == 0 or matrix.cols == 0:
        raise DataError(
            f"{path} holds a tensor of shape {(matrix.rows, matrix.cols)}; "
            "expected a non-empty [n_tokens, d_in] matrix."
        )
    size = path.stat().st_size
    if size < matrix.offset + matrix.rows * matrix.row_bytes:
        raise DataError(
            f"Cannot read activations from {path}: the file is truncated ({size} bytes, its "
            f"header announces {matrix.offset + matrix.rows * matrix.row_bytes})."
        )
    return matrix


def _open_npy(path: Path) -> MatrixFile:
    with open(path, "rb") as handle:
        if handle.read(6) != _NPY_MAGIC:
            raise DataError(f"Cannot read activations from {path}: not a .npy file.")
        major = handle.read(2)[0]
        length_format = "<H" if major == 1 else "<I"
        (length,) = struct.unpack(length_format, handle.read(struct.calcsize(length_format)))
        header = ast.literal_eval(handle.read(length).decode("latin1"))
        offset = handle.tell()
    descr, shape = header["descr"], tuple(header["shape"])
    if not isinstance(descr, str) or "O" in descr or descr.startswith("|V"):
        raise DataError(
            f"Cannot read activations from {path}: it holds Python objects (dtype {descr!r}); "
            "pickled arrays are never loaded."
        )
    if len(shape) != 2:
        raise DataError(
            f"{path} holds a tensor of shape {shape}; expected a non-empty [n_tokens, d_in] matrix."
        )
    if descr not in NPY_DTYPES:
        raise DataError(
            f"{path} holds {descr} values; expected little-endian floating point (float16, "
            "float32 or float64)."
        )
    if header["fortran_order"]:
        raise DataError(
            f"{path} is stored in Fortran (column-major) order; save it C-ordered, e.g. "
            "np.save(path, np.ascontiguousarray(array))."
        )
    return MatrixFile(path, offset, NPY_DTYPES[descr], int(shape[0]), int(shape[1]))


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a .safetensors file and the offset where its data begins."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100_000_000:
            raise DataError(f"Cannot read activations from {path}: not a .safetensors file.")
        header = json.loads(handle.read(length))
    return header, 8 + length


def _open_safetensors(path: Path, key: str | None) -> MatrixFile:
    header, data_start = safetensors_header(path)
    names = sorted(name for name in header if name != "__metadata__")
    if key is None:
        if len(names) != 1:
            raise DataError(f"{path} holds tensors {names}; choose one with data.key=NAME.")
        key = names[0]
    if key not in names:
        raise DataError(f"data.key={key!r} is not in {path}; it holds {names}.")
    entry = header[key]
    shape = tuple(entry["shape"])
    if len(shape) != 2:
        raise DataError(
            f"{path} holds a tensor of shape {shape}; expected a non-empty [n_tokens, d_in] matrix."
        )
    if entry["dtype"] not in SAFETENSORS_DTYPES:
        raise DataError(f"{path} holds {entry['dtype']} values; expected floating point.")
    begin, _ = entry["data_offsets"]
    return MatrixFile(
        path, data_start + begin, SAFETENSORS_DTYPES[entry["dtype"]], int(shape[0]), int(shape[1])
    )


def non_finite(block: Tensor) -> bool:
    return not bool(torch.isfinite(block).all())


def scan(matrix: MatrixFile) -> tuple[str, bool]:
    """(sha256 of the whole file, whether every value of the matrix is finite), in one pass of
    bounded reads."""
    digest = hashlib.sha256()
    finite = True
    rows_per_block = max(1, READ_BLOCK // matrix.row_bytes)
    with open(matrix.path, "rb", buffering=0) as handle:
        digest.update(handle.read(matrix.offset))
        for start in range(0, matrix.rows, rows_per_block):
            block = torch.empty(
                min(rows_per_block, matrix.rows - start), matrix.cols, dtype=matrix.dtype
            )
            read_into(handle, block, matrix.path, digest)
            finite = finite and not non_finite(block)
        for tail in iter(lambda: handle.read(READ_BLOCK), b""):
            digest.update(tail)
    return digest.hexdigest(), finite
