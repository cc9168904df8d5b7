"""Finetuning datasets: an uploaded JSONL file -> token samples, with errors naming the line.

Each non-blank line is one JSON object in one of three shapes:

* ``{"prompt": str, "completion": str}``: BOS + prompt + completion + EOS;
* ``{"messages": [{"role", "content"}, ...]}``: BOS + the conversation rendered with the
  chat template (`render_chat`, no generation prompt) + EOS;
* ``{"text": str}``: BOS + text + EOS.

The loss covers every token of a sample (the engine has no loss mask yet), prompt included.
"""

from __future__ import annotations

import json
from typing import Any

from jgraph.core import ConfigError
from jgraph.coserve._chat import normalize_messages, render_chat
from jgraph.coserve._tokenizer import Tokenizer

__all__ = ["parse_dataset"]


def _sample(obj: Any, tok: Tokenizer, template: str | None) -> list[int]:
    if not isinstance(obj, dict):
        raise ValueError("is not a JSON object")
    if "messages" in obj:
        try:
            msgs = normalize_messages(obj["messages"])
            text = render_chat(msgs, template=template, add_generation_prompt=False)
        except ConfigError as exc:
            raise ValueError(f"{exc.field}: {exc.problem}") from None
        ids = tok.encode(text)
    elif "prompt" in obj or "completion" in obj:
        p, c = obj.get("prompt"), obj.get("completion")
        if not isinstance(p, str) or not isinstance(c, str):
            raise ValueError('needs string "prompt" and "completion"')
        ids = tok.encode(p) + tok.encode(c, add_bos=False)
    elif "text" in obj:
        if not isinstance(obj["text"], str):
            raise ValueError('"text" is not a string')
        ids = tok.encode(obj["text"])
    else:
        raise ValueError('has none of "prompt"/"completion", "messages" or "text"')
    return ids + ([tok.eos_id] if tok.eos_id is not None else [])


def parse_dataset(
    data: bytes, tok: Tokenizer, *, max_len: int, template: str | None = None
) -> list[list[int]]:
    """Tokenizes a finetuning JSONL file (see the module docstring).

    Args:
        data: the file's bytes (UTF-8).
        tok: the served model's tokenizer.
        max_len: the longest sample the engine trains on (``CoServeConfig.ft_max_len``).
        template: the chat template for ``messages`` lines (None: the default one).

    Raises:
        ConfigError: not UTF-8, no samples, or a line that is not JSON, has another shape, or
            tokenizes to fewer than 2 or more than ``max_len`` tokens; the field names the line.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "training_file", f"byte {exc.start}", "is not UTF-8", "upload UTF-8"
        ) from None
    samples = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ids = _sample(json.loads(line), tok, template)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise ConfigError(
                f"training_file line {n}", line[:80], str(exc), "fix or remove that line"
            ) from None
        if not 2 <= len(ids) <= max_len:
            raise ConfigError(
                f"training_file line {n}",
                f"{len(ids)} tokens",
                f"must tokenize to 2..{max_len} tokens (the engine's ft_max_len)",
                "shorten or split that example",
            )
        samples.append(ids)
    if not samples:
        raise ConfigError("training_file", "0 lines", "holds no examples", "upload JSONL lines")
    return samples
