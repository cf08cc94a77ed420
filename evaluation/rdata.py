"""Read R serialization streams and R lazy-load databases (`.rdx` + `.rdb`) without R.

R packages ship their data sets as a lazy-load database: `Rdata.rdx` is a compressed
serialization of an index (a named list whose `variables` entry maps each object name to an
(offset, length) pair in `Rdata.rdb`), and every `.rdb` entry is a 4-byte big-endian length
followed by a compressed serialization of one object. This module reads the subset of the
format that data sets use: vectors (character, logical, integer, double, complex, raw, list,
expression), pairlists and language objects, symbols with back-references, attributes, and the
ALTREP compact sequences and wrappers that R 3.5+ writes. Closures, environments, bytecode and
external pointers are refused with `NotImplementedError`.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LazyLoadDB",
    "RDataError",
    "RPairList",
    "RSymbol",
    "RVector",
    "read_rds",
    "unserialize",
]

# SEXP types (R internals, `Rinternals.h`) and the serializer's pseudo types (`serialize.c`).
_NILSXP, _SYMSXP, _LISTSXP, _CLOSXP, _ENVSXP, _PROMSXP, _LANGSXP = 0, 1, 2, 3, 4, 5, 6
_CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _CPLXSXP, _STRSXP = 9, 10, 13, 14, 15, 16
_DOTSXP, _VECSXP, _EXPRSXP, _RAWSXP, _S4SXP = 17, 19, 20, 24, 25
_ALTREP_SXP, _EMPTYENV_SXP, _BASEENV_SXP = 238, 242, 241
_BASENAMESPACE_SXP, _MISSINGARG_SXP, _UNBOUNDVALUE_SXP = 247, 251, 252
_GLOBALENV_SXP, _NILVALUE_SXP, _REFSXP = 253, 254, 255

_VECTOR_KINDS = {
    _LGLSXP: "logical",
    _INTSXP: "integer",
    _REALSXP: "double",
    _CPLXSXP: "complex",
    _STRSXP: "character",
    _VECSXP: "list",
    _EXPRSXP: "expression",
    _RAWSXP: "raw",
}
_PAIRLIST_KINDS = {_LISTSXP: "pairlist", _LANGSXP: "language", _DOTSXP: "dots"}

# CHARSXP encoding bits (in the `levels` field of the flags word).
_LATIN1_MASK = 1 << 2
_BYTES_MASK = 1 << 1

_R_NA_INTEGER = -(2**31)


class RDataError(ValueError):
    """Raised when a byte stream is not a well-formed R serialization."""


@dataclasses.dataclass(frozen=True)
class RSymbol:
    """An R symbol (a name), such as a list tag or a function name in a call."""

    name: str


@dataclasses.dataclass(frozen=True)
class RVector:
    """An R vector with its attributes.

    `values` is a list of `str | None` for character vectors (None is NA), a list of R values for
    lists and expressions, `bytes` for raw vectors, and a NumPy array otherwise (int32 for
    integer and logical, with NA as -2**31; float64 for double; complex128 for complex).
    """

    kind: str
    values: Any
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def names(self) -> list[str | None] | None:
        """The `names` attribute as a list of strings, or None when the vector has none."""
        names = self.attributes.get("names")
        return None if names is None else list(names.values)

    def to_dict(self) -> dict[str, Any]:
        """Map each name to its element; raises `RDataError` when names are missing or repeated."""
        names = self.names
        if names is None or None in names or len(set(names)) != len(names):
            raise RDataError(f"a {self.kind} vector needs unique, non-NA names; got {names!r}")
        return dict(zip(names, self.values, strict=True))


@dataclasses.dataclass(frozen=True)
class RPairList:
    """An R pairlist or language object: (tag, value) cells in order, plus attributes."""

    kind: str
    items: tuple[tuple[str | None, Any], ...]
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Map each tag to its value; raises `RDataError` when a cell has no tag."""
        if any(tag is None for tag, _ in self.items):
            raise RDataError("a pairlist cell without a tag cannot become a dict entry")
        return {tag: value for tag, value in self.items}


class _Reader:
    """Cursor over one XDR ('X') serialization stream."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []
        self.native_encoding = "UTF-8"

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise RDataError(f"stream truncated: need {size} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        length = self.int()
        if length == -1:  # long vector: two more ints, upper then lower 32 bits
            upper, lower = struct.unpack(">II", self.take(8))
            length = (upper << 32) | lower
        elif length < -1:
            raise RDataError(f"negative vector length {length} at offset {self.pos - 4}")
        return length

    def header(self) -> None:
        magic = self.take(2)
        if magic != b"X\n":
            raise RDataError(f"only XDR serializations ('X\\n') are supported, got {magic!r}")
        version = self.int()
        self.int()  # version of R that wrote the stream
        self.int()  # oldest R version that can read it
        if version == 3:
            self.native_encoding = self.take(self.int()).decode("ascii")
        elif version != 2:
            raise RDataError(f"unsupported serialization format version {version}")

    def item(self) -> Any:
        flags = self.int()
        sexp_type = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if sexp_type in (_NILVALUE_SXP, _NILSXP):
            return None
        if sexp_type == _REFSXP:
            index = flags >> 8
            if index == 0:
                index = self.int()
            if not 1 <= index <= len(self.refs):
                raise RDataError(f"reference {index} outside the table of {len(self.refs)}")
            return self.refs[index - 1]
        if sexp_type in (_EMPTYENV_SXP, _BASEENV_SXP, _GLOBALENV_SXP, _BASENAMESPACE_SXP):
            return RSymbol(f"<environment {sexp_type}>")
        if sexp_type in (_MISSINGARG_SXP, _UNBOUNDVALUE_SXP):
            return None
        if sexp_type == _SYMSXP:
            symbol = RSymbol(self.item())
            self.refs.append(symbol)
            return symbol
        if sexp_type == _CHARSXP:
            return self.charsxp(levels)
        if sexp_type in _PAIRLIST_KINDS:
            return self.pairlist(sexp_type, has_attr, has_tag)
        if sexp_type in _VECTOR_KINDS:
            values = self.vector_values(sexp_type)
            attributes = self.attributes() if has_attr else {}
            return RVector(_VECTOR_KINDS[sexp_type], values, attributes)
        if sexp_type == _ALTREP_SXP:
            return self.altrep()
        raise NotImplementedError(
            f"R object type {sexp_type} at offset {self.pos - 4} is not supported "
            "(closures, environments, bytecode, S4 and external pointers are not data)"
        )

    def charsxp(self, levels: int) -> str | None:
        length = self.int()
        if length == -1:
            return None
        raw = self.take(length)
        if levels & _LATIN1_MASK:
            return raw.decode("latin-1")
        if levels & _BYTES_MASK:
            return raw.decode("latin-1")
        encoding = (
            "latin-1" if self.native_encoding.upper() in ("LATIN1", "ISO-8859-1") else "utf-8"
        )
        return raw.decode(encoding, errors="replace")

    def vector_values(self, sexp_type: int) -> Any:
        length = self.length()
        if sexp_type in (_LGLSXP, _INTSXP):
            return np.frombuffer(self.take(4 * length), dtype=">i4").astype(np.int32)
        if sexp_type == _REALSXP:
            return np.frombuffer(self.take(8 * length), dtype=">f8").astype(np.float64)
        if sexp_type == _CPLXSXP:
            parts = np.frombuffer(self.take(16 * length), dtype=">f8").astype(np.float64)
            return parts[0::2] + 1j * parts[1::2]
        if sexp_type == _RAWSXP:
            return self.take(length)
        # STRSXP holds CHARSXPs; VECSXP and EXPRSXP hold arbitrary items.
        return [self.item() for _ in range(length)]

    def attributes(self) -> dict[str, Any]:
        attributes = self.item()
        if not isinstance(attributes, RPairList):
            raise RDataError(f"attributes must be a pairlist, got {type(attributes).__name__}")
        return attributes.to_dict()

    def pairlist(self, sexp_type: int, has_attr: bool, has_tag: bool) -> RPairList:
        # A pairlist is a chain of cells; read it iteratively so long lists do not recurse.
        kind = _PAIRLIST_KINDS[sexp_type]
        items: list[tuple[str | None, Any]] = []
        attributes: dict[str, Any] = {}
        while True:
            cell_attributes = self.attributes() if has_attr else {}
            if not items:
                attributes = cell_attributes
            tag = self.item() if has_tag else None
            tag_name = tag.name if isinstance(tag, RSymbol) else None
            items.append((tag_name, self.item()))
            flags = self.int()
            next_type = flags & 0xFF
            if next_type in (_NILVALUE_SXP, _NILSXP):
                return RPairList(kind, tuple(items), attributes)
            if next_type not in _PAIRLIST_KINDS:
                # The tail is some other object (an improper list): read it as the last cell.
                self.pos -= 4
                items.append((None, self.item()))
                return RPairList(kind, tuple(items), attributes)
            has_attr = bool(flags & (1 << 9))
            has_tag = bool(flags & (1 << 10))

    def altrep(self) -> Any:
        info = self.item()
        state = self.item()
        attributes = self.item()
        if not isinstance(info, RPairList) or not isinstance(info.items[0][1], RSymbol):
            raise RDataError("malformed ALTREP class information")
        class_name = info.items[0][1].name
        if class_name in ("compact_intseq", "compact_realseq"):
            length, start, step = (float(x) for x in state.values[:3])
            values = start + step * np.arange(int(length))
            kind = "integer" if class_name == "compact_intseq" else "double"
            values = values.astype(np.int32 if kind == "integer" else np.float64)
            result = RVector(kind, values)
        elif class_name.startswith("wrap_"):
            result = state.values[0]  # list(payload, metadata)
        else:
            raise NotImplementedError(f"ALTREP class {class_name!r} is not supported")
        if isinstance(attributes, RPairList):
            result = dataclasses.replace(result, attributes=attributes.to_dict())
        return result


def _decompress(data: bytes) -> bytes:
    """Undo the whole-file compression R uses for `.rds` and `.rdx` files, if any."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def unserialize(data: bytes) -> Any:
    """Decode one uncompressed R serialization stream (XDR format, versions 2 and 3).

    Args:
      data: the bytes, starting with `X\\n`.

    Returns:
      The object: None for NULL, `RVector`, `RPairList` or `RSymbol`.
    """
    reader = _Reader(data)
    reader.header()
    return reader.item()


def read_rds(path: str | Path) -> Any:
    """Read an `.rds` (or `.rdx`) file: an optionally gzip/bzip2/xz-compressed serialization.

    Args:
      path: the file.

    Returns:
      The object, as `unserialize` returns it.
    """
    return unserialize(_decompress(Path(path).read_bytes()))


class LazyLoadDB:
    """An R lazy-load database: an `.rdx` index and the `.rdb` file it points into.

    Args:
      index_path: the `.rdx` file; the `.rdb` file is the same path with suffix `.rdb`.
    """

    def __init__(self, index_path: str | Path):
        self.index_path = Path(index_path)
        self.data_path = self.index_path.with_suffix(".rdb")
        index = read_rds(self.index_path)
        if not isinstance(index, RVector) or index.kind != "list":
            raise RDataError(f"{self.index_path} does not hold a lazy-load index (a named list)")
        entries = index.to_dict()
        if "variables" not in entries:
            raise RDataError(f"{self.index_path} has no 'variables' entry: {list(entries)}")
        self._compression = _compression_kind(entries.get("compressed"))
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, position in entries["variables"].to_dict().items():
            offset, length = (int(x) for x in position.values[:2])
            self._offsets[name] = (offset, length)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the objects in the database, in index order."""
        return tuple(self._offsets)

    def load(self, name: str) -> Any:
        """Read and decode one object.

        Args:
          name: one of `names`.

        Returns:
          The object, as `unserialize` returns it.
        """
        if name not in self._offsets:
            raise KeyError(f"{name!r} is not in {self.index_path}; it holds {self.names}")
        offset, length = self._offsets[name]
        with open(self.data_path, "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        if len(blob) != length:
            raise RDataError(f"{self.data_path} is truncated: {name!r} needs {length} bytes")
        return unserialize(_decompress_entry(blob, self._compression))


def _compression_kind(flag: Any) -> int:
    """Return the lazy-load compression code: 1 zlib, 2 bzip2, 3 xz (0 means none)."""
    if flag is None:
        return 1
    value = flag.values[0] if isinstance(flag, RVector) else flag
    return int(value)


def _decompress_entry(blob: bytes, compression: int) -> bytes:
    """Decompress one `.rdb` entry: a big-endian uncompressed length, then the payload."""
    (size,) = struct.unpack(">I", blob[:4])
    if compression in (0, 1):
        data = zlib.decompress(blob[4:]) if compression == 1 else blob[4:]
    else:
        # Types 2 and 3 add one byte naming the codec actually used for this entry.
        codec, payload = blob[4:5], blob[5:]
        if codec == b"Z":
            data = zlib.decompress(payload)
        elif codec == b"2":
            data = bz2.decompress(payload)
        elif codec == b"X":
            data = lzma.decompress(payload)
        elif codec == b"0":
            data = payload
        else:
            raise RDataError(f"unknown lazy-load codec byte {codec!r}")
    if len(data) != size:
        raise RDataError(f"entry decompressed to {len(data)} bytes, header says {size}")
    return data
