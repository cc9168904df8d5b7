"""Chat prompts: messages -> text with the checkpoint's Jinja chat template, or a default.

A checkpoint's ``tokenizer_config.json`` may carry a ``chat_template`` (`HFTokenizer`
reads it); it is rendered the way transformers does: a sandboxed Jinja environment with
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and a
``raise_exception`` helper. The server renders with empty ``bos_token``/``eos_token`` strings
and adds the BOS id itself when it tokenizes, so a template that writes ``{{ bos_token }}``
does not produce two.

Without one (the byte tokenizer of the ``tiny`` model, or a checkpoint without a template),
`DEFAULT_CHAT_TEMPLATE` is used: each message on its own lines as ``<|role|>`` then the
content, and ``<|assistant|>`` as the generation prompt::

    <|system|>
    You are terse.
    <|user|>
    Hi
    <|assistant|>
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from jgraph.core import ConfigError

__all__ = ["DEFAULT_CHAT_TEMPLATE", "ROLES", "render_chat"]

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""The template used when the tokenizer has none (see the module docstring)."""

ROLES = ("system", "developer", "user", "assistant", "tool")


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _content(value: Any, i: int) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text"}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise ConfigError(
        f"messages[{i}].content", value, "is not text", "send a string or text content parts"
    )


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """Checks OpenAI-style messages and returns ``[{"role", "content"}]`` with text content.

    Raises:
        ConfigError: not a non-empty list of messages with a known role and text content.
    """
    if not isinstance(messages, list) or not messages:
        raise ConfigError("messages", messages, "must be a non-empty list", "send chat messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ConfigError(f"messages[{i}]", m, "is not an object", "send {role, content}")
        role = m.get("role")
        if role not in ROLES:
            raise ConfigError(f"messages[{i}].role", role, "is not a chat role", f"use {ROLES}")
        out.append({"role": str(role), "content": _content(m.get("content"), i)})
    return out


def render_chat(
    messages: Sequence[Mapping[str, str]],
    *,
    template: str | None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Renders normalized messages with ``template`` (`DEFAULT_CHAT_TEMPLATE` if None).

    Raises:
        ConfigError: the template fails to render (it may reject a message order itself).

    Example:
        >>> render_chat([{"role": "user", "content": "Hi"}], template=None)
        '<|user|>\\nHi\\n<|assistant|>\\n'
    """
    from jinja2 import TemplateError

    try:
        return str(
            _compile(template or DEFAULT_CHAT_TEMPLATE).render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            )
        )
    except TemplateError as exc:
        raise ConfigError(
            "messages", "chat template", f"could not be rendered ({exc})", "check the messages"
        ) from None
