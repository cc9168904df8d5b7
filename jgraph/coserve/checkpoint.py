"""Local files: Hugging Face Llama checkpoints (config.json + *.safetensors), tokenizers and
PEFT adapters. Nothing is downloaded.
"""

from jgraph.coserve._checkpoint import load_hf_checkpoint as load_hf_checkpoint
from jgraph.coserve._checkpoint import save_hf_checkpoint as save_hf_checkpoint
from jgraph.coserve._hf_config import config_from_hf as config_from_hf
from jgraph.coserve._lora import load_peft as load_peft
from jgraph.coserve._lora import save_peft as save_peft
from jgraph.coserve._tokenizer import ByteTokenizer as ByteTokenizer
from jgraph.coserve._tokenizer import HFTokenizer as HFTokenizer

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "config_from_hf",
    "load_hf_checkpoint",
    "load_peft",
    "save_hf_checkpoint",
    "save_peft",
]
