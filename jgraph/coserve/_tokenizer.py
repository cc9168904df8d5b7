"""Tokenizers: a byte-level one for demos and tests, and Hugging Face ``tokenizers`` from a local
``tokenizer.json`` (no downloads), with ``tokenizer_config.json``'s special tokens and chat
template when the snapshot has one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from jgraph.core import ConfigError

__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer"]


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    bos_id: int | None
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then BOS 256, EOS 257, PAD 258 (vocab 259; tiny models use 260).

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hi")
        [256, 104, 105]
        >>> tok.decode(tok.encode("hi"))
        'hi'
    """

    bos_id: int | None = 256
    eos_id: int | None = 257
    pad_id: int = 258
    vocab_size: int = 259

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [256, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer read from a local ``tokenizer.json``.

    Args:
        path: the ``tokenizer.json`` file or a directory holding one.
        bos_token: the BOS token string (default: ``tokenizer_config.json``'s ``bos_token``
            beside the file, else the first of ``<|begin_of_text|>``, ``<s>`` found in the
            vocabulary, else none).
        eos_token: the EOS token string (default: ``tokenizer_config.json``'s ``eos_token``,
            else ``<|end_of_text|>``, ``<|eot_id|>`` or ``</s>``).

    Attributes:
        chat_template: the Jinja chat template of ``tokenizer_config.json`` (the ``default``
            one when it holds several), or None; rendering it is the server's job.

    Raises:
        ConfigError: no tokenizer.json there, a special token not in the vocabulary, or an
            unreadable tokenizer_config.json.
    """

    def __init__(
        self, path: str | Path, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> None:
        from tokenizers import Tokenizer as _Tok

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ConfigError("tokenizer", str(path), "not found", "pass a local tokenizer.json")
        self._tok = _Tok.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        conf = _read_config(path.parent / "tokenizer_config.json")
        self.chat_template = _template(conf.get("chat_template"))
        self.bos_id = self._find(bos_token or _token(conf.get("bos_token")),
                                 ("<|begin_of_text|>", "<s>"))  # fmt: skip
        self.eos_id = self._find(eos_token or _token(conf.get("eos_token")),
                                 ("<|end_of_text|>", "<|eot_id|>", "</s>"))  # fmt: skip

    def _find(self, given: str | None, defaults: tuple[str, ...]) -> int | None:
        for t in (given,) if given else defaults:
            i = self._tok.token_to_id(t)
            if i is not None:
                return i
        if given:
            raise ConfigError("tokenizer special token", given, "not in vocabulary", "check it")
        return None

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        conf = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "tokenizer_config.json", str(path), f"cannot be read ({exc})", "re-download it"
        ) from None
    return conf if isinstance(conf, dict) else {}


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template(value: Any) -> str | None:
    """The chat template: a string, or transformers' list of ``{"name", "template"}``."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None
