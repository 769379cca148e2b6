"""Small builders shared by tests: a tokenizer trained on a few strings and a tiny random causal LM."""

from __future__ import annotations

import subprocess
import time
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


#: Wall-clock limit of a subprocess a test waits for: a guard against hangs only, far above what any command
#: of the suite takes on a slow or busy machine (the slowest, a whole micro workflow, takes minutes).
HANG_GUARD_S = 3600


def run_guarded(cmd: list[str], *, guard_s: float = HANG_GUARD_S, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` with a hang guard: a command that
    outlives ``guard_s`` fails the test with a message that says it hung (not that it was slow)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=guard_s, **kwargs)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:] if isinstance(err.stdout, bytes) else (err.stdout or "")[-2000:]
        raise AssertionError(f"hang guard: {' '.join(map(str, cmd[:6]))} ... still running after {guard_s:.0f} s "
                             f"(a guard against hangs, not a time budget); last output:\n{tail}") from None


def wait_until(condition, *, what: str, guard_s: float = HANG_GUARD_S, poll_s: float = 0.2,
               alive=None) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` if the hang guard passes or ``alive()`` turns
    false first (e.g. the process that should make it true ended)."""
    deadline = time.monotonic() + guard_s
    while not condition():
        if alive is not None and not alive():
            raise AssertionError(f"the process ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: no {what} after {guard_s:.0f} s")
        time.sleep(poll_s)
