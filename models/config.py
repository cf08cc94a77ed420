"""Model configuration read strictly from a Hugging Face `config.json`.

Llama 2 / 3 / 3.1, Mistral (no sliding window), Qwen2 / Qwen2.5 and SmolLM2 are one decoder
family. A key that would change the computation and is not handled here is refused by name
instead of being silently ignored. A key that is absent takes the value transformers' config
class of the family gives it (`LlamaConfig`, `MistralConfig`, `Qwen2Config` of transformers
5.24), except the shape keys, which must be present.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

# Keys that carry no meaning for inference (training knobs, bookkeeping).
_IGNORED_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "attention_dropout",
        "dtype",
        "initializer_range",
        "is_llama_config",
        "output_attentions",
        "output_hidden_states",
        "pretraining_tp",  # only splits HF's matmuls; the result is the same function
        "return_dict",
        "torch_dtype",
        "transformers.js_config",
        "transformers_version",
        "use_cache",
    }
)
_COMMON_KEYS = frozenset(
    {
        "bos_token_id",
        "eos_token_id",
        "head_dim",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "max_position_embeddings",
        "model_type",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "pad_token_id",
        "partial_rotary_factor",
        "rms_norm_eps",
        "rope_parameters",
        "rope_scaling",
        "rope_theta",
        "tie_word_embeddings",
        "vocab_size",
    }
)
_FAMILY_KEYS = {
    "llama": frozenset({"attention_bias", "mlp_bias", "rope_interleaved"}),
    "mistral": frozenset({"sliding_window"}),
    "qwen2": frozenset(
        {"layer_types", "max_window_layers", "sliding_window", "use_mrope", "use_sliding_window"}
    ),
}
_ROPE_KEYS = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": frozenset(
        {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    ),
    "yarn": frozenset(
        {
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        }
    ),
}
_ROPE_REQUIRED = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "llama3": frozenset({"factor", "low_freq_factor", "high_freq_factor"}),
    "yarn": frozenset({"factor"}),
}
# Shape keys: transformers has defaults for them (a 7B model's), but a checkpoint whose config
# lacks one is broken, so they are required.
_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
# What transformers 5.24's config classes use for a key that config.json leaves out, for every
# key that changes what the model computes (or when generation stops). A None
# num_key_value_heads means one kv head per query head; a None head_dim, hidden_size // heads.
_COMMON_DEFAULTS = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "head_dim": None,
    "pad_token_id": None,
}
_FAMILY_DEFAULTS = {
    "llama": {
        "max_position_embeddings": 2048,
        "num_key_value_heads": None,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "mistral": {
        "max_position_embeddings": 4096 * 32,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "qwen2": {
        "max_position_embeddings": 32768,
        "num_key_value_heads": 32,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "bos_token_id": None,
        "eos_token_id": None,
    },
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary position embedding: base frequency and optional context-extension scaling.

    `rope_type` is one of "default", "linear", "llama3" (Llama 3.1) or "yarn" (Qwen2.5 long
    context). Fields that a type does not use stay None.
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")
        if not (self.theta > 0 and math.isfinite(self.theta)):
            raise ValueError(f"rope theta={self.theta} must be a positive finite number")
        if self.rope_type != "default" and (self.factor is None or self.factor <= 0):
            raise ValueError(
                f"rope_type={self.rope_type!r} needs a positive factor, got {self.factor}"
            )
        if self.rope_type == "llama3":
            for name in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if getattr(self, name) is None:
                    raise ValueError(f"rope_type='llama3' needs {name}")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError(
                    f"llama3 rope: high_freq_factor={self.high_freq_factor} must exceed "
                    f"low_freq_factor={self.low_freq_factor}"
                )
        if self.rope_type == "yarn" and self.original_max_position_embeddings is None:
            raise ValueError("rope_type='yarn' needs original_max_position_embeddings")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and numerics of one decoder of the Llama family.

    Dim letters: D hidden_size, F intermediate_size, L num_layers, N num_heads, K num_kv_heads,
    H head_dim, V vocab_size.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    rope: RopeConfig = dataclasses.field(default_factory=RopeConfig)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r} is not one of {MODEL_TYPES}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if (
            not isinstance(self.rms_norm_eps, (int, float))
            or isinstance(self.rms_norm_eps, bool)
            or not self.rms_norm_eps > 0
        ):
            raise ValueError(f"rms_norm_eps={self.rms_norm_eps!r} must be a positive number")
        if self.model_type == "qwen2" and (not self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError(
                f"qwen2 has q/k/v bias only; got qkv_bias={self.qkv_bias}, o_bias={self.o_bias}, "
                f"mlp_bias={self.mlp_bias}"
            )
        if self.model_type == "mistral" and (self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("mistral has no biases")
        for token_id in (self.bos_token_id, self.pad_token_id, *self.eos_token_ids):
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})"
                )

    @property
    def group_size(self) -> int:
        """G = N // K query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Parses a Hugging Face `config.json` dict, refusing keys it does not understand.

        Absent keys take the family's transformers defaults (`_FAMILY_DEFAULTS`); absent shape
        keys are refused.

        Args:
          hf: the decoded `config.json`.
          source: what the dict was read from (a path), named in error messages.

        Returns:
          The validated config.
        """
        if not isinstance(hf, Mapping):
            raise ValueError(f"{source} holds a {type(hf).__name__}, not a JSON object")
        model_type = hf.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type={model_type!r} is not supported; expected one of "
                f"{MODEL_TYPES}"
            )
        unknown = set(hf) - _IGNORED_KEYS - _COMMON_KEYS - _FAMILY_KEYS[model_type]
        if unknown:
            raise ValueError(
                f"{source}: keys {sorted(unknown)} are not understood for model_type "
                f"{model_type!r}; refusing rather than guessing what they change"
            )
        missing = [key for key in _REQUIRED_KEYS if key not in hf]
        if missing:
            raise ValueError(f"{source} lacks the required key(s) {missing}")
        given = dict(hf)
        hf = _COMMON_DEFAULTS | _FAMILY_DEFAULTS[model_type] | given
        if hf["hidden_act"] not in ("silu", "swish"):
            raise ValueError(
                f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only 'silu', "
                "also spelled 'swish')"
            )
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(
                f"{source}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported "
                "(only 1.0)"
            )
        if hf.get("rope_interleaved", False):
            raise ValueError(
                f"{source}: rope_interleaved=true is not supported (HF half-rotation layout only)"
            )
        if hf.get("use_mrope", False):
            raise ValueError(f"{source}: use_mrope=true (multimodal rope) is not supported")
        max_positions = hf["max_position_embeddings"]
        try:
            _refuse_sliding_window(hf, model_type, max_positions, source, given)
            num_heads = hf["num_attention_heads"]
            head_dim = hf["head_dim"] or hf["hidden_size"] // num_heads
            eos = hf["eos_token_id"]
            eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
            attention_bias = bool(hf.get("attention_bias", False))
            return cls(
                model_type=model_type,
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=num_heads,
                num_kv_heads=hf["num_key_value_heads"] or num_heads,
                head_dim=head_dim,
                rms_norm_eps=hf["rms_norm_eps"],
                max_position_embeddings=max_positions,
                tie_word_embeddings=bool(hf["tie_word_embeddings"]),
                qkv_bias=model_type == "qwen2" or attention_bias,
                o_bias=attention_bias,
                mlp_bias=bool(hf.get("mlp_bias", False)),
                rope=_rope_from_hf(given, max_positions),
                bos_token_id=hf["bos_token_id"],
                eos_token_ids=eos_ids,
                pad_token_id=hf["pad_token_id"],
            )
        except (TypeError, ZeroDivisionError) as error:
            raise ValueError(f"{source}: {error}") from error
        except ValueError as error:
            if str(error).startswith(source):
                raise
            raise ValueError(f"{source}: {error}") from error

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dict describing this model (old-style rope keys)."""
        hf: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope.theta,
            "rope_scaling": _rope_to_hf(self.rope),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids)
            if len(self.eos_token_ids) != 1
            else self.eos_token_ids[0],
            "pad_token_id": self.pad_token_id,
        }
        if self.model_type == "llama":
            hf["attention_bias"] = self.o_bias
            hf["mlp_bias"] = self.mlp_bias
        elif self.qkv_bias != (self.model_type == "qwen2") or self.o_bias or self.mlp_bias:
            raise ValueError(f"{self.model_type} cannot express these biases in config.json")
        if self.model_type == "mistral":
            hf["sliding_window"] = None
        if self.model_type == "qwen2":
            hf["use_sliding_window"] = False
        return hf


def read_config_json(path: str | Path) -> ModelConfig:
    """Reads and validates a `config.json` file; errors name the file.

    Args:
      path: the config.json file.

    Returns:
      The validated config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    return ModelConfig.from_hf(hf, source=str(path))


def _refuse_sliding_window(
    hf: Mapping[str, Any],
    model_type: str,
    max_positions: int,
    source: str,
    given: Mapping[str, Any],
) -> None:
    """Raises if the config (defaults filled in) has a sliding window that would mask keys."""
    if model_type == "mistral":
        window = hf["sliding_window"]
        # A window at least as long as the context never masks anything.
        if window is not None and window < max_positions:
            if "sliding_window" not in given:
                raise ValueError(
                    f"{source} has no sliding_window key, so transformers' MistralConfig applies "
                    f"its default window of {window} tokens, which masks keys within "
                    f"max_position_embeddings={max_positions}: sliding-window attention is not "
                    'supported (write "sliding_window": null if the model attends to its whole '
                    "context)"
                )
            raise ValueError(
                f"{source}: sliding_window={window} < max_position_embeddings={max_positions}: "
                "sliding-window attention is not supported"
            )
    if model_type == "qwen2":
        layer_types = hf.get("layer_types") or []
        sliding = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
        if sliding:
            raise ValueError(
                f"{source}: layer_types marks layers {sliding} as {layer_types[sliding[0]]!r}; "
                "only full attention is supported"
            )
        # Qwen2Config: with use_sliding_window, layers from max_window_layers on slide.
        num_layers, first_sliding = hf["num_hidden_layers"], hf["max_window_layers"]
        if (
            not layer_types
            and hf["use_sliding_window"]
            and hf["sliding_window"] is not None
            and first_sliding < num_layers
        ):
            raise ValueError(
                f"{source}: use_sliding_window=true with max_window_layers={first_sliding} "
                f"< num_hidden_layers={num_layers} enables sliding-window attention, which is "
                "not supported"
            )


def _rope_from_hf(hf: Mapping[str, Any], max_positions: int) -> RopeConfig:
    """Reads rope settings from either `rope_parameters` (transformers 5) or the older
    `rope_theta` + `rope_scaling` keys."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    if params and scaling and params != scaling:
        raise ValueError(f"rope_parameters={params} and rope_scaling={scaling} disagree")
    params = params or scaling
    theta = params.pop("rope_theta", None)
    if theta is None:
        theta = hf.get("rope_theta", _COMMON_DEFAULTS["rope_theta"])
    elif "rope_theta" in hf and hf["rope_theta"] != theta:
        raise ValueError(f"rope_theta={hf['rope_theta']} disagrees with rope_parameters ({theta})")
    kind = params.pop("rope_type", None)
    alias = params.pop("type", None)
    if kind is not None and alias is not None and kind != alias:
        raise ValueError(f"rope_scaling has rope_type={kind!r} but type={alias!r}")
    kind = kind or alias or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"rope type {kind!r} is not supported; supported: {ROPE_TYPES} ('dynamic' changes "
            "frequencies with the sequence length and is refused on purpose)"
        )
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial rotary embeddings are not supported")
    unknown = set(params) - _ROPE_KEYS[kind]
    if unknown:
        raise ValueError(
            f"rope scaling keys {sorted(unknown)} are not understood for type {kind!r}"
        )
    missing = _ROPE_REQUIRED[kind] - set(params)
    if missing:
        raise ValueError(f"rope type {kind!r} needs keys {sorted(missing)}")
    if kind in ("llama3", "yarn"):
        # transformers' standardize_rope_params: the pretraining context defaults to the model's.
        params.setdefault("original_max_position_embeddings", max_positions)
    if "truncate" in params and params["truncate"] is None:
        del params["truncate"]
    return RopeConfig(rope_type=kind, theta=float(theta), **params)


def _rope_to_hf(rope: RopeConfig) -> dict[str, Any] | None:
    if rope.rope_type == "default":
        return None
    out: dict[str, Any] = {"rope_type": rope.rope_type}
    for name in sorted(_ROPE_KEYS[rope.rope_type]):
        value = getattr(rope, name)
        if value is not None:
            out[name] = value
    return out


def extend_context(config: ModelConfig, factor: float) -> ModelConfig:
    """The model with YaRN context extension by `factor` over the context it was trained for.

    Equivalent to adding `"rope_scaling": {"type": "yarn", "factor": factor,
    "original_max_position_embeddings": <its max_position_embeddings>}` to config.json and
    multiplying max_position_embeddings by `factor`, which is how Qwen2.5 documents 128K
    contexts (factor 4 over 32K). The weights are unchanged.

    Raises:
      ValueError if the model already scales its rope or the factor is not above 1.
    """
    if not factor > 1.0:
        raise ValueError(f"a context extension factor must be above 1, got {factor}")
    if config.rope.rope_type != "default":
        raise ValueError(
            f"the model already uses {config.rope.rope_type!r} rope scaling; YaRN extends only"
            " an unscaled rope"
        )
    original = config.max_position_embeddings
    rope = dataclasses.replace(
        config.rope,
        rope_type="yarn",
        factor=float(factor),
        original_max_position_embeddings=original,
    )
    return dataclasses.replace(
        config, rope=rope, max_position_embeddings=int(round(original * factor))
    )
