"""Small builders shared by tests: a tokenizer trained on a few strings and a tiny random causal LM."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ebft.modeling import build_tiny_model
from ebft.tokenizer import train_bpe

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "Translate from English to German.\nEnglish: I have three apples.\nGerman: Ich habe drei Äpfel.\n",
    "import os\nprint(os.getcwd())\n",
] * 20

TINY_SPEC = {
    "architecture": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def tiny_tokenizer(tmp: Path, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    return train_bpe(TEXTS, vocab_size, tmp / "tok")


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> PreTrainedModel:
    return build_tiny_model({**TINY_SPEC, **overrides}, tokenizer, seed=seed)
