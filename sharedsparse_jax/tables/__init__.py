"""Sharing tables calibrated for the built-in models, shipped as package data.

    from sharedsparse_jax.tables import builtin_table
    table = builtin_table("smollm2-135m-instruct", num_layers=30, num_heads=9)

`resolve_table` turns what a command line asks for (`builtin`, `none` or a table file) into a
table. Each `<name>.json` holds the reference schema (`clusters`, `shared_clusters`) plus `metadata`
(model, calibration texts and lengths, thresholds, tool version) written by
`sharedsparse-calibrate`; docs/calibration.md gives the command that made each one.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal, NamedTuple

from sharedsparse_jax.sharing import SharingTable

__all__ = ["BUILTIN_TABLES", "ResolvedTable", "builtin_table", "resolve_table", "table_path"]

# Built-in model name (models.fetch.BUILTIN_MODELS) -> table file in this package.
BUILTIN_TABLES = {
    "smollm2-135m-instruct": "smollm2-135m-instruct.json",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct.json",
}


def table_path(name: str) -> Path:
    """The shipped table file of a built-in model.

    Args:
      name: a key of BUILTIN_TABLES.

    Returns:
      Its path inside the installed package.
    """
    if name not in BUILTIN_TABLES:
        raise ValueError(f"no built-in sharing table for {name!r}; known: {sorted(BUILTIN_TABLES)}")
    path = resources.files(__name__).joinpath(BUILTIN_TABLES[name])
    if not path.is_file():
        raise FileNotFoundError(
            f"the sharing table {BUILTIN_TABLES[name]} is missing from {__name__}"
        )
    return Path(str(path))


def builtin_table(
    name: str, *, num_layers: int | None = None, num_heads: int | None = None
) -> SharingTable:
    """Loads a built-in model's calibrated sharing table.

    Args:
      name: a key of BUILTIN_TABLES.
      num_layers, num_heads: the model's layer and query-head counts; when given, a table made
        for another shape raises a ValueError naming both (default: the table's own).

    Returns:
      The table.
    """
    data = json.loads(table_path(name).read_text())
    metadata = data.get("metadata", {})
    table_layers, table_heads = metadata.get("num_layers"), metadata.get("num_heads")
    if table_layers is None or table_heads is None:
        raise ValueError(f"built-in table {name!r} lacks num_layers / num_heads metadata")
    if (num_layers, num_heads) != (None, None) and (
        (num_layers or table_layers, num_heads or table_heads) != (table_layers, table_heads)
    ):
        raise ValueError(
            f"the built-in table {name!r} is for {table_layers} layers x {table_heads} query"
            f" heads (model {metadata.get('model', '?')}), not {num_layers} x {num_heads}"
        )
    return SharingTable.from_json_dict(data, num_layers=table_layers, num_heads=table_heads)


class ResolvedTable(NamedTuple):
    """The sharing table a run asked for, and where it came from.

    table: the table, or None (SharePrefill then shares nothing).
    origin: `file` (a table JSON path), `shipped` (the table shipped for the model), `unshipped`
      (the shipped table was asked for and the model has none) or `off` (`none` was asked for).
    """

    table: SharingTable | None
    origin: Literal["file", "shipped", "unshipped", "off"]


def resolve_table(
    choice: str | None, model: str | None, *, num_layers: int, num_heads: int
) -> ResolvedTable:
    """The sharing table a command line asks for: a table file, the model's shipped one, or none.

    Args:
      choice: a table JSON path; `none` (any case) for no table; None or `builtin` for the
        table shipped for `model`, or no table when none is shipped.
      model: the model's built-in name (None, or a model with no shipped table: none shipped).
      num_layers, num_heads: the model's layer and query-head counts; a table (file or shipped)
        made for another shape raises a ValueError.

    Returns:
      The table (or None) and its origin.
    """
    if choice is not None and choice.lower() == "none":
        return ResolvedTable(None, "off")
    if choice is not None and choice != "builtin":
        table = SharingTable.load(choice, num_layers=num_layers, num_heads=num_heads)
        return ResolvedTable(table, "file")
    if model not in BUILTIN_TABLES:
        return ResolvedTable(None, "unshipped")
    table = builtin_table(model, num_layers=num_layers, num_heads=num_heads)
    return ResolvedTable(table, "shipped")
