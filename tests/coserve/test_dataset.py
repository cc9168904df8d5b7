"""Finetuning JSONL parsing and chat templates."""

import json

import pytest

from jgraph.core import ConfigError
from jgraph.coserve._chat import normalize_messages, render_chat
from jgraph.coserve._dataset import parse_dataset
from jgraph.coserve.checkpoint import ByteTokenizer

TOK = ByteTokenizer()


def _jsonl(*objs) -> bytes:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs).encode()


def test_the_three_line_shapes():
    data = _jsonl(
        {"prompt": "ab", "completion": "c"},
        "",
        {"text": "xy"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    )
    s = parse_dataset(data, TOK, max_len=64)
    assert s[0] == [256, 97, 98, 99, 257]  # BOS a b c EOS
    assert s[1] == [256, 120, 121, 257]
    assert s[2] == [256, *b"<|user|>\nq\n<|assistant|>\na\n", 257]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "Expecting value"),
        ('{"prompt": 3, "completion": "x"}', "string"),
        ('{"foo": 1}', "none of"),
        ("[1, 2]", "not a JSON object"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role"),
        ('{"text": "' + "x" * 70 + '"}', "tokens"),
    ],
)
def test_a_bad_line_is_named(line, problem):
    data = _jsonl({"text": "ok"}, {"text": "ok"}, line)
    with pytest.raises(ConfigError, match=problem) as e:
        parse_dataset(data, TOK, max_len=64)
    assert e.value.field == "training_file line 3"


def test_empty_and_non_utf8_files():
    with pytest.raises(ConfigError, match="no examples"):
        parse_dataset(b"\n\n", TOK, max_len=64)
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_dataset(b"\xff\xfe", TOK, max_len=64)


def test_chat_templates():
    msgs = normalize_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert render_chat(msgs, template=None) == "<|user|>\nHi\n<|assistant|>\n"
    assert render_chat(msgs, template=None, add_generation_prompt=False) == "<|user|>\nHi\n"
    hf = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"
    assert render_chat(msgs, template=hf, eos_token="</s>") == "[user]Hi</s>"
    bad = "{{ raise_exception('only user/assistant') }}"
    with pytest.raises(ConfigError, match="only user/assistant"):
        render_chat(msgs, template=bad)
    with pytest.raises(ConfigError, match="role"):
        normalize_messages([{"role": "x", "content": "y"}])
    with pytest.raises(ConfigError, match="non-empty"):
        normalize_messages([])
