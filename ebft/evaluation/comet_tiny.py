"""Build a tiny, randomly initialised COMET checkpoint fully offline (tests and CPU smoke runs).

Runs inside the COMET environment (``.venv-comet``)::

    <comet python> -m ebft.evaluation.comet_tiny OUT_DIR [--texts FILE] [--seed 0]

and prints the checkpoint path. The layout is the one ``comet.load_from_checkpoint`` expects::

    OUT_DIR/encoder/            tokenizer (Unigram, trained with ``tokenizers`` on the texts) + XLM-R config
    OUT_DIR/hparams.yaml        class_identifier + hyper-parameters; pretrained_model = ABSOLUTE encoder path
    OUT_DIR/checkpoints/model.ckpt

The model is a ``RegressionMetric`` on a 2-layer XLM-R encoder (hidden 64) with random weights: the scores
are meaningless, but tokenisation, layer mixing, the estimator head, checkpoint loading and ``predict`` are
the real COMET code path (see docs/comet.md). Building is deterministic for a given seed and texts.

Only the standard library is imported at module level (``comet``, ``torch``, ``tokenizers``, ``transformers``
and ``yaml`` inside :func:`build_tiny_comet`), and no other ``ebft`` module is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, the order XLM-R expects

# Fallback corpus when no --texts file is given: enough to train a small Unigram vocabulary.
DEFAULT_TEXTS = [
    "I have three apples.",
    "Ich habe drei Äpfel.",
    "The weather is nice today.",
    "Das Wetter ist heute schön.",
    "Translate from English to German.",
    "She reads a book in the garden.",
    "Sie liest ein Buch im Garten.",
    "Twenty-one thousand four hundred and seven.",
    "Einundzwanzigtausendvierhundertsieben.",
    "def add(a, b):\n    return a + b",
    "Please enter a valid email address.",
    "Bitte geben Sie eine gültige E-Mail-Adresse ein.",
] * 8


def build_tiny_comet(
    out_dir: str | Path,
    texts: list[str] | None = None,
    *,
    vocab_size: int = 1000,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny RegressionMetric checkpoint under ``out_dir``; returns ``out_dir/checkpoints/model.ckpt``."""
    import pytorch_lightning as pl
    import torch
    import yaml
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    out_dir = Path(out_dir).resolve()
    enc_dir = out_dir / "encoder"
    texts = [t for t in (texts if texts is not None else DEFAULT_TEXTS) if t.strip()]
    if not texts:
        raise ValueError("build_tiny_comet needs at least one non-empty text to train the tokenizer")

    # 1) sentencepiece-style Unigram tokenizer with XLM-R special tokens and pair template.
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok = _canonical_unigram(tok, texts)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    ).save_pretrained(enc_dir)
    XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ).save_pretrained(enc_dir)

    # 2) COMET regression metric with a random encoder (seeded), read from the local encoder folder only.
    from comet.models import RegressionMetric

    torch.manual_seed(seed)
    model = RegressionMetric(
        pretrained_model=str(enc_dir),  # absolute: COMET resolves it against the cwd at load time
        load_pretrained_weights=False,
        local_files_only=True,
        encoder_model="XLM-RoBERTa",
        layer="mix",
        hidden_sizes=[hidden_size, hidden_size // 2],
        batch_size=2,
    )

    # 3) COMET layout: load_from_checkpoint reads <ckpt>.parents[1]/hparams.yaml.
    ckpt = out_dir / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    hparams = dict(model.hparams)
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": pl.__version__},
        ckpt,
    )
    with open(out_dir / "hparams.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump({"class_identifier": "regression_metric", **hparams}, f)
    return ckpt


def _canonical_unigram(tok, texts: list[str]):
    """Give the trained Unigram pieces scores computed from exact counts, and order them by (score, text), so
    that the tokenizer, its ids and the checkpoint are the same in every process.

    The Unigram EM of ``tokenizers`` sums in a process-dependent (hash) order: its piece scores differ between
    runs by up to ~1e-10, and the single characters it adds get scores spaced by 1e-4 in hash-set order. No
    rounding grid is safe against such noise (a value near a rounding boundary still flips). So only the
    trainer's *set* of pieces is kept, and each piece ``p`` gets ``log(c(p) / sum_q c(q))``, where ``c(p)`` is
    the number of occurrences of ``p`` as a substring of the normalized, pre-tokenized ``texts`` (integer
    counts, so the floats are a function of the texts alone; ties are ordered by the piece text).
    """
    import math
    from collections import Counter

    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    n_special = len(SPECIAL_TOKENS)
    if [piece for piece, _ in vocab[:n_special]] != SPECIAL_TOKENS:
        raise RuntimeError(f"unexpected special tokens at the head of the Unigram vocab: {vocab[:n_special]}")
    pieces = {piece for piece, _ in vocab[n_special:]}
    longest = max((len(p) for p in pieces), default=1)
    words = Counter(
        word for text in texts for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))
    )
    counts: Counter[str] = Counter()
    for word, freq in words.items():
        for i in range(len(word)):
            for j in range(i + 1, min(len(word), i + longest) + 1):
                if word[i:j] in pieces:
                    counts[word[i:j]] += freq
    total = sum(counts.values())
    scored = sorted(((p, math.log(max(counts[p], 1) / total)) for p in pieces), key=lambda x: (-x[1], x[0]))
    spec["model"]["vocab"] = [list(v) for v in vocab[:n_special]] + [list(v) for v in scored]
    return Tokenizer.from_str(json.dumps(spec))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ebft.evaluation.comet_tiny", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="output folder (hparams.yaml, checkpoints/model.ckpt, encoder/)")
    p.add_argument("--texts", default=None, help="UTF-8 text file, one text per line, for the tokenizer")
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    texts = None
    if args.texts:
        texts = Path(args.texts).read_text(encoding="utf-8").splitlines()
    print(build_tiny_comet(args.out_dir, texts, vocab_size=args.vocab_size, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
