"""Builders of small `.deb` and wheel archives for offline fetch tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}".encode("ascii") + b"`\n"
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path: Path, files: dict[str, bytes], *, codec: str = "xz") -> Path:
    """Write a `.deb` (ar: debian-binary, control.tar.xz, data.tar.<codec>) holding `files`."""
    mode = {"xz": "w:xz", "gz": "w:gz"}[codec]
    parts = [
        _ar_member("debian-binary", b"2.0\n"),
        _ar_member("control.tar.xz", _tar({"control": b"Package: test\n"}, "w:xz")),
        _ar_member(f"data.tar.{codec}", _tar(files, mode)),
    ]
    path.write_bytes(b"!<arch>\n" + b"".join(parts))
    return path


def make_zst_deb(path: Path) -> Path:
    """A `.deb` whose data member claims zstd compression (the payload is not read)."""
    parts = [_ar_member("debian-binary", b"2.0\n"), _ar_member("data.tar.zst", b"\x28\xb5")]
    path.write_bytes(b"!<arch>\n" + b"".join(parts))
    return path


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """Write a zip archive (a wheel's container) holding `files`."""
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path
