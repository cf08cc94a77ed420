"""The results directory: one JSON Lines file per cell, appended unit by unit, so runs resume.

A *cell* is (model, task, length, setting); its *units* are text windows (task `text`) or
retrieval samples. A model run with its context extended by YaRN is named with its factor
(`model_label`: `qwen2.5-coder-0.5b-instruct+yarn4`), so results and cached logits at different
factors never share a file. Layout under the root:

    runs.jsonl                                   one line per invocation: hardware, commit, options
    units/<model>/<task>/L<length>/<setting>.jsonl   one record per finished unit
    units/<model>/<task>/L<length>/<setting>.cell.json   what the cell was run with
    cache/dense_logits/<model>/L<length>/<unit>.npy  dense last logits for KL (a cache, not results)

A unit is written (and flushed) as soon as it is done; a rerun reads the files and skips finished
units. A cell run with different parameters than the ones on disk is refused, not mixed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CellKey", "CellMismatchError", "ResultStore", "model_label", "split_model_label"]

TEXT = "text"
_YARN_MARK = "+yarn"


def model_label(name: str, yarn_factor: float | None) -> str:
    """A model's name in results: `name`, or `name+yarn<factor>` with its context extended."""
    return name if yarn_factor is None else f"{name}{_YARN_MARK}{yarn_factor:g}"


def split_model_label(label: str) -> tuple[str, float | None]:
    """The model's name and YaRN factor (None: none) of a `model_label`."""
    name, mark, factor = label.partition(_YARN_MARK)
    return name, float(factor) if mark else None


class CellMismatchError(RuntimeError):
    """A cell on disk was run with other parameters than the ones asked for now."""


@dataclasses.dataclass(frozen=True, order=True)
class CellKey:
    """Which cell: model, task (`text` or a retrieval task), length in tokens, setting label."""

    model: str
    task: str
    length: int
    setting: str

    @property
    def relative_dir(self) -> Path:
        return Path("units") / self.model / self.task / f"L{self.length}"


class ResultStore:
    """Reads and appends cell records under one root directory."""

    def __init__(self, root: str | Path):
        """Opens (and creates) a results directory.

        Args:
          root: the results directory.
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._units: dict[CellKey, dict[str, dict[str, Any]]] = {}

    def _path(self, cell: CellKey, suffix: str) -> Path:
        return self.root / cell.relative_dir / f"{cell.setting}{suffix}"

    def units(self, cell: CellKey) -> dict[str, dict[str, Any]]:
        """Finished units of a cell: unit id -> record (a torn last line is ignored)."""
        if cell not in self._units:
            records: dict[str, dict[str, Any]] = {}
            path = self._path(cell, ".jsonl")
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # an interrupted write; the unit runs again
                    records[record["unit"]] = record
            self._units[cell] = records
        return self._units[cell]

    def has(self, cell: CellKey, unit: str) -> bool:
        return unit in self.units(cell)

    def append(self, cell: CellKey, record: Mapping[str, Any]) -> None:
        """Adds one finished unit (its record must hold a `unit` id) and flushes it to disk."""
        record = dict(record)
        path = self._path(cell, ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        is_torn = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                is_torn = f.read(1) != b"\n"
        with open(path, "a", encoding="utf-8") as f:
            if is_torn:
                f.write("\n")  # after an interrupted write, start a fresh line
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.units(cell)[record["unit"]] = record

    def check_parameters(self, cell: CellKey, parameters: Mapping[str, Any]) -> None:
        """Records a cell's parameters, or checks them against the ones already recorded.

        Args:
          cell: the cell.
          parameters: JSON-ready description of how its units are made.

        Raises:
          CellMismatchError: the cell exists with other parameters.
        """
        path = self._path(cell, ".cell.json")
        wanted = json.loads(json.dumps(parameters, sort_keys=True))
        if path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if recorded != wanted:
                changed = sorted(
                    k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k)
                )
                raise CellMismatchError(
                    f"{path} was run with other parameters ({', '.join(changed)} differ); use "
                    "another results directory or delete the cell to rerun it"
                )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def parameters(self, cell: CellKey) -> dict[str, Any]:
        """The recorded parameters of a cell ({} if none)."""
        path = self._path(cell, ".cell.json")
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def cells(self) -> Iterator[CellKey]:
        """Every cell with a records file, sorted."""
        keys = []
        for path in (self.root / "units").glob("*/*/L*/*.jsonl"):
            model, task, length = path.parts[-4], path.parts[-3], int(path.parts[-2][1:])
            keys.append(CellKey(model, task, length, path.name.removesuffix(".jsonl")))
        yield from sorted(keys)

    def _logits_path(self, model: str, length: int, unit: str) -> Path:
        return self.root / "cache" / "dense_logits" / model / f"L{length}" / f"{unit}.npy"

    def save_dense_logits(self, model: str, length: int, unit: str, logits: np.ndarray) -> None:
        """Keeps a window's dense last-position logits [Q, V] for later KL (written atomically)."""
        path = self._logits_path(model, length, unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp.npy")
        np.save(scratch, np.asarray(logits, np.float32))
        scratch.replace(path)

    def load_dense_logits(self, model: str, length: int, unit: str) -> np.ndarray | None:
        """The saved dense logits of a window, or None."""
        path = self._logits_path(model, length, unit)
        return np.load(path) if path.is_file() else None

    def log_run(self, info: Mapping[str, Any]) -> None:
        """Appends one invocation's description to `runs.jsonl`."""
        with open(self.root / "runs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(info), sort_keys=True) + "\n")

    def runs(self) -> list[dict[str, Any]]:
        """Every logged invocation, oldest first."""
        path = self.root / "runs.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
