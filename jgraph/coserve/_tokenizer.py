"""Tokenizers: a byte-level one for demos and tests, and Hugging Face ``tokenizers`` from a local
``tokenizer.json`` (no downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

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
        bos_token: the BOS token string (default: the first of ``<|begin_of_text|>``, ``<s>``
            found in the vocabulary, else none).
        eos_token: the EOS token string (default: ``<|end_of_text|>``, ``<|eot_id|>`` or ``</s>``).

    Raises:
        ConfigError: no tokenizer.json there.
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
        self.bos_id = self._find(bos_token, ("<|begin_of_text|>", "<s>"))
        self.eos_id = self._find(eos_token, ("<|end_of_text|>", "<|eot_id|>", "</s>"))

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
