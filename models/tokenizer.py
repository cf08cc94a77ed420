"""Tokenizers (`tokenizers` library) from `tokenizer.json` or GGUF metadata, with chat templates.

GGUF files with `tokenizer.ggml.model == "gpt2"` describe a byte-level BPE: the vocabulary and
merges are stored, and `tokenizer.ggml.pre` names how text is split before BPE. The splits below
follow llama.cpp's pre-tokenizers for the names we support.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

# Token types in GGUF metadata.
_CONTROL, _USER_DEFINED = 3, 4

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre == name`."""
    if name in ("qwen2", "deepseek-r1-qwen"):
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    if name in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    if name == "smollm":  # every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if name in ("gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise ValueError(f"GGUF tokenizer.ggml.pre={name!r} is not a supported pre-tokenizer")


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelling[byte] = chr(byte)
        else:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return spelling


class Tokenizer:
    """Text <-> token ids, special tokens and the chat template of one model."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | None = None,
    ):
        """Wraps a `tokenizers.Tokenizer` with the settings HF keeps in `tokenizer_config.json`."""
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of a token string; raises if it is not in the vocabulary."""
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.token_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.token_id(self.eos_token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, with BOS / EOS when the model asks for them."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token is not None:
            ids = [self.bos_token_id, *ids]
        if add_special_tokens and self.add_eos_token and self.eos_token is not None:
            ids = [*ids, self.eos_token_id]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of token ids."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **extra: Any,
    ) -> str | list[int]:
        """Renders a conversation with the model's chat template, as transformers does.

        Args:
          messages: [{"role": ..., "content": ...}, ...].
          add_generation_prompt: end with the assistant header so the model answers.
          tokenize: return token ids (encoded without adding BOS/EOS) instead of text.
          **extra: more template variables (e.g. tools).

        Returns:
          The prompt text, or its token ids.
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        text = _compiled_template(self.chat_template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
            **extra,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def save(self, directory: str | Path) -> None:
        """Writes `tokenizer.json` and `tokenizer_config.json` into a directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        settings = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "chat_template": self.chat_template,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """Loads `tokenizer.json` (+ `tokenizer_config.json` if present) from a directory."""
        directory = Path(directory)
        backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        settings = json.loads(config_path.read_text()) if config_path.is_file() else {}

        def token(name: str) -> str | None:
            value = settings.get(name)
            return value.get("content") if isinstance(value, dict) else value

        return cls(
            backend,
            bos_token=token("bos_token"),
            eos_token=token("eos_token"),
            pad_token=token("pad_token"),
            add_bos_token=bool(settings.get("add_bos_token", False)),
            add_eos_token=bool(settings.get("add_eos_token", False)),
            chat_template=settings.get("chat_template"),
        )

    @classmethod
    def from_gguf(cls, reader: Any, *, source: str = "GGUF file") -> Tokenizer:
        """Builds the tokenizer a GGUF file describes (byte-level BPE only).

        Args:
          reader: an open `gguf.GGUFReader`.
          source: the file's name, for error messages.

        Returns:
          The tokenizer, with special tokens and chat template from the metadata.
        """
        fields = reader.fields

        def get(key: str, default: Any = None) -> Any:
            return fields[key].contents() if key in fields else default

        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"{source}: GGUF tokenizer.ggml.model={kind!r} is not supported (only 'gpt2')"
            )
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in fields:
                raise ValueError(f"{source}: GGUF metadata lacks {key}")
        tokens = get("tokenizer.ggml.tokens")
        token_types = get("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(merge.split(" ", 1)) for merge in get("tokenizer.ggml.merges")]
        alphabet = set(_byte_alphabet().values())
        spelling = _byte_alphabet()
        vocab = {}
        for index, token in enumerate(tokens):
            if not set(token) <= alphabet:  # a literal token (e.g. control): spell its bytes
                token = "".join(spelling[b] for b in token.encode("utf-8"))
            vocab.setdefault(token, index)
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        backend.pre_tokenizer = _pre_tokenizer(get("tokenizer.ggml.pre", "default"))
        backend.decoder = decoders.ByteLevel()
        special = [
            AddedToken(token, special=True, normalized=False)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _CONTROL and set(token) <= alphabet
        ]
        user_defined = [
            AddedToken(token, special=False, normalized=False)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _USER_DEFINED
        ]
        backend.add_special_tokens(special)
        backend.add_tokens(user_defined)

        def token_of(key: str) -> str | None:
            token_id = get(f"tokenizer.ggml.{key}")
            return None if token_id is None else tokens[int(token_id)]

        return cls(
            backend,
            bos_token=token_of("bos_token_id"),
            eos_token=token_of("eos_token_id"),
            pad_token=token_of("padding_token_id"),
            add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)),
            add_eos_token=bool(get("tokenizer.ggml.add_eos_token", False)),
            chat_template=get("tokenizer.chat_template"),
        )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@functools.cache
def _compiled_template(source: str) -> jinja2.Template:
    """Compiles a chat template in a sandbox with the helpers HF templates expect."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda value, indent=None, ensure_ascii=False: json.dumps(
        value, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)
