"""Strict filling of the model's parameter tree from a stream of source tensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from models.config import ModelConfig
from models.llama import parameter_shapes

CONVERTER_VERSION = 1


STORED_DTYPES = ("float32", "bfloat16", "float16")


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for "float32", "bfloat16" or "float16"."""
    dtypes = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if name not in dtypes:
        raise ValueError(f"dtype={name!r} is not one of {sorted(dtypes)}")
    return np.dtype(dtypes[name])


class ParameterFiller:
    """Parameter tree that every target entry must be written into exactly once.

    Stacked layer parameters are filled one layer at a time; the error messages name the source
    tensor that caused them. With `scratch_dir`, every target is a memory-mapped `.npy` file
    there, so a conversion streams tensor by tensor through the page cache instead of holding
    the whole tree in host memory.
    """

    def __init__(
        self, config: ModelConfig, dtype: str = "float32", *, scratch_dir: str | Path | None = None
    ):
        self.config = config
        self.dtype = numpy_dtype(dtype)
        shapes = parameter_shapes(config)
        self._arrays: dict[str, np.ndarray] = {}
        self._filled: dict[str, np.ndarray] = {}
        for index, (name, shape) in enumerate(_flatten(shapes).items()):
            if scratch_dir is None:
                self._arrays[name] = np.empty(shape, self.dtype)
            else:
                path = Path(scratch_dir) / f"{index:03d}.npy"
                self._arrays[name] = np.lib.format.open_memmap(
                    path, mode="w+", dtype=self.dtype, shape=tuple(shape)
                )
            layers = shape[0] if name.startswith("layers/") else 1
            self._filled[name] = np.zeros(layers, bool)
        self._sources: set[str] = set()

    def fill(
        self, target: str, value: np.ndarray, *, source: str, layer: int | None = None
    ) -> None:
        """Writes one target (one layer of it for stacked parameters).

        Args:
          target: "embed", "final_norm", "lm_head" or "layers/<name>".
          value: the converted array, already in the target layout.
          source: the source tensor's name, for error messages.
          layer: the layer index for stacked parameters.
        """
        if source in self._sources:
            raise ValueError(f"source tensor {source!r} is used twice")
        if target not in self._arrays:
            raise ValueError(
                f"source tensor {source!r} maps to {target!r}, which this model config does not "
                "have (a bias the config does not enable, or an lm_head for tied embeddings?)"
            )
        is_stacked = target.startswith("layers/")
        if is_stacked != (layer is not None):
            raise ValueError(f"{source!r}: layer index {layer} does not fit target {target!r}")
        expected = self._arrays[target].shape[1:] if is_stacked else self._arrays[target].shape
        if tuple(value.shape) != tuple(expected):
            raise ValueError(
                f"source tensor {source!r} has shape {tuple(value.shape)} after conversion; "
                f"{target!r} needs {tuple(expected)}"
            )
        if is_stacked and not 0 <= layer < self.config.num_layers:
            raise ValueError(
                f"source tensor {source!r} names layer {layer}, but the config has "
                f"{self.config.num_layers} layers"
            )
        slot = layer if is_stacked else 0
        if self._filled[target][slot]:
            raise ValueError(f"{target!r} (layer {layer}) is filled twice, last by {source!r}")
        if is_stacked:
            self._arrays[target][layer] = value
        else:
            self._arrays[target][...] = value
        self._filled[target][slot] = True
        self._sources.add(source)

    def mark_used(self, source: str) -> None:
        """Records a source tensor that fills no target (its content went into the config)."""
        if source in self._sources:
            raise ValueError(f"source tensor {source!r} is used twice")
        self._sources.add(source)

    def finish(self) -> dict[str, Any]:
        """Checks that every target was filled and returns the nested parameter tree."""
        missing = []
        for name, filled in self._filled.items():
            if not filled.all():
                layers = np.flatnonzero(~filled).tolist()
                missing.append(name if len(filled) == 1 else f"{name} (layers {layers})")
        if missing:
            raise ValueError(f"no source tensor filled {missing}")
        tree: dict[str, Any] = {}
        for name, array in self._arrays.items():
            node = tree
            *parents, leaf = name.split("/")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = array
        return tree


def target_of(
    name: str,
    *,
    top_targets: dict[str, str],
    layer_tensor: re.Pattern,
    layer_targets: dict[str, str],
    unknown: str,
) -> tuple[str, int | None]:
    """The target and layer (None for unstacked targets) a source tensor's name maps to.

    Args:
      name: the source tensor's name.
      top_targets: whole names of unstacked tensors -> target.
      layer_tensor: a pattern whose groups are (layer index, rest of the name).
      layer_targets: rest of a layer tensor's name -> stacked target.
      unknown: the ValueError's message when the name maps to nothing ({name!r} is filled in).
    """
    if name in top_targets:
        return top_targets[name], None
    match = layer_tensor.match(name)
    if match and match.group(2) in layer_targets:
        return layer_targets[match.group(2)], int(match.group(1))
    raise ValueError(unknown.format(name=name))


def check_source_shape(source: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    """Raises if a source tensor's shape differs from the one the config implies."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"source tensor {source!r} has shape {tuple(array.shape)}; the config implies "
            f"{tuple(expected)}"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def hf_layouts(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], Any]]:
    """For each target name, the source shape in the HF (out, in) layout and the conversion.

    GGUF tensors, once dequantized and un-permuted, are in the same layout, so both converters
    share this table.

    Returns:
      {target: (source_shape, convert)} with convert: np.ndarray -> target-layout np.ndarray.
    """
    V, D, F = config.vocab_size, config.hidden_size, config.intermediate_size
    N, K, H = config.num_heads, config.num_kv_heads, config.head_dim

    def heads_in(count):  # [count * H, D] -> [D, count, H]
        return lambda w: w.reshape(count, H, D).transpose(2, 0, 1)

    def heads_bias(count):  # [count * H] -> [count, H]
        return lambda b: b.reshape(count, H)

    keep = lambda w: w
    transpose = lambda w: w.T
    return {
        "embed": ((V, D), keep),
        "final_norm": ((D,), keep),
        "lm_head": ((V, D), transpose),
        "layers/attn_norm": ((D,), keep),
        "layers/mlp_norm": ((D,), keep),
        "layers/q_proj": ((N * H, D), heads_in(N)),
        "layers/k_proj": ((K * H, D), heads_in(K)),
        "layers/v_proj": ((K * H, D), heads_in(K)),
        "layers/q_bias": ((N * H,), heads_bias(N)),
        "layers/k_bias": ((K * H,), heads_bias(K)),
        "layers/v_bias": ((K * H,), heads_bias(K)),
        "layers/o_proj": ((D, N * H), lambda w: w.reshape(D, N, H).transpose(1, 2, 0)),
        "layers/o_bias": ((D,), keep),
        "layers/gate_proj": ((F, D), transpose),
        "layers/up_proj": ((F, D), transpose),
        "layers/down_proj": ((D, F), transpose),
        "layers/gate_bias": ((F,), keep),
        "layers/up_bias": ((F,), keep),
        "layers/down_bias": ((D,), keep),
    }


def fill_from_hf_layout(
    filler: ParameterFiller, target: str, array: np.ndarray, *, source: str, layer: int | None
) -> None:
    """Checks a source tensor's HF-layout shape, converts it and fills its target."""
    layouts = hf_layouts(filler.config)
    if target not in layouts:
        raise ValueError(f"source tensor {source!r}: unknown target {target!r}")
    shape, convert = layouts[target]
    check_source_shape(source, array, shape)
    filler.fill(target, convert(np.asarray(array)), source=source, layer=layer)
