"""Writes the frozen Hugging Face oracle for coserve's checkpoint loader (issue #15).

Run by hand where torch, transformers and peft are installed (CI does not install them):

    python scripts/make_hf_fixtures.py --out tests/coserve/fixtures/hf

Each case is a tiny random-init float32 checkpoint exactly as transformers (and PEFT) save it,
plus ``expected.json``: the token ids, Hugging Face's logits on them, its greedy continuation,
what jgraph must do with it ("load" or "refuse" with the refused config key) and the versions
that wrote it. ``*_v4`` cases hold the same weights with the config.json rewritten in the
transformers 4.x key layout (top-level ``rope_theta``/``rope_scaling``, ``torch_dtype``).
`tests/coserve/test_hf_fixtures.py` loads every case with jgraph and compares.

``--smoke`` (what CI runs) checks the committed fixtures instead: every case has its files and
an ``expected.json`` naming the versions; it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

IDS = [1, 5, 9, 2, 17, 30, 3, 11, 8, 22, 4, 13]
NEW_TOKENS = 8
# Tiny: tens of KB per checkpoint. GQA (4 query heads, 2 KV heads), head_dim 4.
BASE = {
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# name -> (family, config overrides, save kwargs, expectation)
MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "llama_plain": ("llama", {}, {}, "load"),
    "llama_tied": ("llama", {"tie_word_embeddings": True}, {}, "load"),
    "llama_head_dim": ("llama", {"head_dim": 8}, {}, "load"),
    "llama3_scaled": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
        {},
        "load",
    ),
    "llama_sharded": ("llama", {}, {"max_shard_size": "8KB"}, "load"),
    "llama_rope_linear": (
        "llama",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}},
        {},
        "load",
    ),
    "mistral": ("mistral", {"sliding_window": None}, {}, "load"),
    "qwen2": ("qwen2", {"use_sliding_window": False, "rope_theta": 1000000.0}, {}, "load"),
    "llama_attention_bias": ("llama", {"attention_bias": True}, {}, "refuse:attention_bias"),
    # max_position_embeddings 8 < the 12 prompt ids: the dynamic base is in effect for every
    # logit and continuation token (expected.json adds "greedy_full", the continuation without
    # a KV cache, where every token is re-rotated for the whole length each step).
    "llama_rope_dynamic": (
        "llama",
        {
            "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
            "max_position_embeddings": 8,
        },
        {},
        "load",
    ),
    "llama_rope_yarn": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 2.0,
                "original_max_position_embeddings": 8,
            },
            "max_position_embeddings": 16,
        },
        {},
        "refuse:rope_parameters.rope_type",
    ),
}
V4 = ("llama_plain", "llama3_scaled")
# name -> peft LoraConfig overrides (on llama_plain)
ADAPTERS: dict[str, dict[str, Any]] = {
    "lora_plain": {"target_modules": ["q_proj", "v_proj"]},
    "lora_rslora": {"target_modules": ["q_proj", "v_proj"], "use_rslora": True},
    "lora_all7": {
        "target_modules": [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    },
}


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}  # fmt: skip


def _oracle(model: Any, *, no_cache: bool = False) -> dict[str, Any]:
    import copy

    import torch

    ids = torch.tensor([IDS])
    # Each call on its own copy: dynamic RoPE keeps state between calls (the longest length
    # seen), so a second call on the same model would not be what a user's first call gives.
    kw = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0,
          "attention_mask": torch.ones_like(ids)}  # fmt: skip
    with torch.no_grad():
        logits = copy.deepcopy(model)(ids).logits[0].float()
        out = copy.deepcopy(model).generate(ids, **kw)
        res = {"ids": IDS, "logits": logits.tolist(), "greedy": out[0, len(IDS) :].tolist()}
        if no_cache:
            full = copy.deepcopy(model).generate(ids, use_cache=False, **kw)
            res["greedy_full"] = full[0, len(IDS) :].tolist()
    return res


def _to_v4(directory: Path) -> None:
    conf = json.loads((directory / "config.json").read_text())
    rope = conf.pop("rope_parameters", None) or {}
    conf["rope_theta"] = rope.pop("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        conf["rope_scaling"] = rope
    if "dtype" in conf:
        conf["torch_dtype"] = conf.pop("dtype")
    (directory / "config.json").write_text(json.dumps(conf, indent=2))


def make(out: Path, only: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    versions = _versions()
    rows = []
    for k, (name, (family, over, save_kw, expect)) in enumerate(MODELS.items()):
        if only and name not in only:
            continue  # each case seeds its own weights: skipping one changes no other
        torch.manual_seed(k)
        conf_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                    "qwen2": transformers.Qwen2Config}  # fmt: skip
        model_cls = {"llama": transformers.LlamaForCausalLM,
                     "mistral": transformers.MistralForCausalLM,
                     "qwen2": transformers.Qwen2ForCausalLM}  # fmt: skip
        model = model_cls[family](conf_cls[family](**{**BASE, **over})).float().eval()
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True, **save_kw)
        dyn = "dynamic" in json.dumps(over)
        exp = {"case": name, "expect": expect, "versions": versions,
               **_oracle(model, no_cache=dyn)}  # fmt: skip
        (d / "expected.json").write_text(json.dumps(exp))
        rows.append({"case": name, "expect": expect, "files": len(list(d.iterdir()))})
        if name in V4:
            d4 = out / f"{name}_v4"
            shutil.rmtree(d4, ignore_errors=True)
            shutil.copytree(d, d4)
            _to_v4(d4)
            (d4 / "expected.json").write_text(json.dumps({**exp, "case": f"{name}_v4"}))
            rows.append({"case": f"{name}_v4", "expect": expect, "files": len(list(d4.iterdir()))})
        if name == "llama_plain":  # the adapters sit on it: they regenerate with it
            base_dir = d
            for j, (aname, aover) in enumerate(ADAPTERS.items()):
                torch.manual_seed(100 + j)
                base = transformers.LlamaForCausalLM.from_pretrained(base_dir).float().eval()
                lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                  init_lora_weights=False, **aover)  # fmt: skip
                pm = get_peft_model(base, lcfg).eval()
                ad = out / aname
                shutil.rmtree(ad, ignore_errors=True)
                pm.save_pretrained(ad)
                (ad / "README.md").unlink(missing_ok=True)  # PEFT's model card: not needed
                exp = {"case": aname, "base": "llama_plain", "expect": "load",
                       "versions": versions, **_oracle(pm)}  # fmt: skip
                (ad / "expected.json").write_text(json.dumps(exp))
                rows.append({"case": aname, "expect": "load", "files": len(list(ad.iterdir()))})
    return rows


def check(out: Path) -> list[dict[str, Any]]:
    """The committed fixtures: files present, versions recorded, sizes (no torch needed)."""
    rows = []
    names = [*MODELS, *(f"{n}_v4" for n in V4), *ADAPTERS]
    for name in names:
        d = out / name
        exp = json.loads((d / "expected.json").read_text())
        weights = sorted(p.name for p in d.glob("*.safetensors"))
        if not weights or exp["case"] != name or "transformers" not in exp["versions"]:
            raise SystemExit(f"fixture {d} is incomplete")
        kb = sum(p.stat().st_size for p in d.iterdir()) / 1024
        rows.append({"case": name, "expect": exp["expect"], "weights": len(weights),
                     "KiB": round(kb, 1), "transformers": exp["versions"]["transformers"]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON summary (with --smoke)")
    ap.add_argument("--fixtures", type=Path, default=Path("tests/coserve/fixtures/hf"))
    ap.add_argument("--smoke", action="store_true", help="check the committed fixtures only")
    ap.add_argument("--only", nargs="+", default=[],
                    help="regenerate just these model cases (llama_plain brings its adapters)")  # fmt: skip
    args = ap.parse_args(argv)
    rows = check(args.fixtures) if args.smoke else make(args.fixtures, frozenset(args.only))
    cols = list(rows[0])
    print("  ".join(f"{c:<22}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:<22}" for c in cols))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
