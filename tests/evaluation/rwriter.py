"""A small R serialization writer (XDR, versions 2 and 3) for building test fixtures.

Independent of `evaluation.rdata`: it follows R's `serialize.c` layout directly, so reading its
output back checks the reader against the format, not against itself.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import struct
import zlib
from pathlib import Path

# Values to write. Names become a `names` attribute.


@dataclasses.dataclass
class Chars:
    values: list  # str or None (NA)
    names: list | None = None
    latin1: bool = False


@dataclasses.dataclass
class Ints:
    values: list
    names: list | None = None
    logical: bool = False


@dataclasses.dataclass
class Doubles:
    values: list


@dataclasses.dataclass
class List:
    items: dict | list  # a dict gives a named list


@dataclasses.dataclass
class Pairs:
    items: list  # (tag or None, value)


@dataclasses.dataclass
class IntSeq:  # ALTREP compact_intseq
    length: int
    start: int


def _int(x: int) -> bytes:
    return struct.pack(">i", x)


def _flags(sexp_type: int, *, attr: bool = False, tag: bool = False, levels: int = 0) -> bytes:
    return _int(sexp_type | (attr << 9) | (tag << 10) | (levels << 12))


class _Out:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.symbols: list[str] = []

    def charsxp(self, text: str | None, latin1: bool = False) -> None:
        if text is None:
            self.chunks += [_flags(9), _int(-1)]
            return
        if latin1:
            raw, levels = text.encode("latin-1"), 1 << 2
        else:
            raw = text.encode("utf-8")
            levels = (1 << 6) if raw.isascii() else (1 << 3)  # ASCII or UTF8 mark
        self.chunks += [_flags(9, levels=levels), _int(len(raw)), raw]

    def symbol(self, name: str) -> None:
        if name in self.symbols:  # back-reference: index (1-based) in the flags' upper bits
            self.chunks.append(_int(((self.symbols.index(name) + 1) << 8) | 255))
            return
        self.symbols.append(name)
        self.chunks.append(_flags(1))
        self.charsxp(name)

    def attributes(self, names: list | None) -> None:
        # A pairlist with one cell tagged `names` holding a character vector.
        self.chunks.append(_flags(2, tag=True))
        self.symbol("names")
        self.value(Chars(names))
        self.chunks.append(_flags(254))

    def value(self, obj) -> None:
        if obj is None:
            self.chunks.append(_flags(254))
        elif isinstance(obj, Chars):
            self.chunks += [_flags(16, attr=obj.names is not None), _int(len(obj.values))]
            for text in obj.values:
                self.charsxp(text, obj.latin1)
            if obj.names is not None:
                self.attributes(obj.names)
        elif isinstance(obj, Ints):
            sexp_type = 10 if obj.logical else 13
            self.chunks += [_flags(sexp_type, attr=obj.names is not None), _int(len(obj.values))]
            self.chunks.append(struct.pack(f">{len(obj.values)}i", *obj.values))
            if obj.names is not None:
                self.attributes(obj.names)
        elif isinstance(obj, Doubles):
            self.chunks += [_flags(14), _int(len(obj.values))]
            self.chunks.append(struct.pack(f">{len(obj.values)}d", *obj.values))
        elif isinstance(obj, List):
            named = isinstance(obj.items, dict)
            items = list(obj.items.values()) if named else obj.items
            self.chunks += [_flags(19, attr=named), _int(len(items))]
            for item in items:
                self.value(item)
            if named:
                self.attributes(list(obj.items))
        elif isinstance(obj, Pairs):
            for tag, item in obj.items:
                self.chunks.append(_flags(2, tag=tag is not None))
                if tag is not None:
                    self.symbol(tag)
                self.value(item)
            self.chunks.append(_flags(254))
        elif isinstance(obj, IntSeq):
            self.chunks.append(_flags(238))
            self.value(
                Pairs([(None, _Sym("compact_intseq")), (None, _Sym("base")), (None, Ints([13]))])
            )
            self.value(Doubles([obj.length, obj.start, 1.0]))
            self.chunks.append(_flags(254))  # no attributes
        elif isinstance(obj, _Sym):
            self.symbol(obj.name)
        else:
            raise TypeError(obj)


@dataclasses.dataclass
class _Sym:
    name: str


def serialize(obj, version: int = 3) -> bytes:
    out = _Out()
    head = [b"X\n", _int(version), _int(0x040201), _int(0x030500)]
    if version == 3:
        head += [_int(5), b"UTF-8"]
    out.value(obj)
    return b"".join(head + out.chunks)


def _compress_entry(data: bytes, compression: int) -> bytes:
    size = struct.pack(">I", len(data))
    if compression == 1:
        return size + zlib.compress(data)
    if compression == 2:
        return size + b"2" + bz2.compress(data)
    if compression == 3:
        return size + b"X" + lzma.compress(data)
    raise ValueError(compression)


def write_lazy_load_db(folder: Path, objects: dict, *, compression: int = 1) -> Path:
    """Write `Rdata.rdx` + `Rdata.rdb` holding `objects`; return the `.rdx` path."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = b""
    variables = {}
    for name, obj in objects.items():
        entry = _compress_entry(serialize(obj), compression)
        variables[name] = Ints([len(blob), len(entry)])
        blob += entry
    (folder / "Rdata.rdb").write_bytes(blob)
    compressed = Ints([1], logical=True) if compression == 1 else Ints([compression])
    index = List({"variables": List(variables), "references": List({}), "compressed": compressed})
    (folder / "Rdata.rdx").write_bytes(gzip.compress(serialize(index)))
    return folder / "Rdata.rdx"
