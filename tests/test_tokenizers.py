"""The data and generation paths with tokenizers shaped like the real ones, built offline.

* ``llama3``: byte-level BPE whose post-processor adds a BOS token, no pad token (Llama 3.2: ``load_tokenizer``
  then pads with EOS);
* ``qwen``: byte-level BPE, no BOS, a pad token that is not EOS (Qwen2.5 instruct: ``<|endoftext|>`` vs
  ``<|im_end|>``);
* ``sentencepiece``: a Metaspace BPE that adds ``<s>`` and whose decoder drops the leading space of the first
  token (Llama 2, Mistral, Gemma).

Covered: packing (no BOS inside chunks, one EOS closing each document, EOS padding), the answer masks and the
validation CE they select, the end of a completion at EOS and the pad tokens after it, HumanEval prompt +
completion assembly (indentation kept), and translation post-processing.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ebft.data.packing import pack_records
from ebft.evaluation.ce import validation_ce
from ebft.generation import generate
from ebft.modeling import load_tokenizer
from ebft.sandbox import check_program
from tests.helpers import TEXTS, tiny_model

RECORDS = [
    {"id": "p0", "question": "def inc(x):\n", "answer": "    y = x + 1\n    return y\n"},
    {"id": "p1", "question": "def add(a, b):\n", "answer": "    return a + b\n"},
    {"id": "p2", "question": "English: the cat\nGerman:", "answer": " die Katze"},
]
CORPUS = [*TEXTS, *(r["question"] + r["answer"] for r in RECORDS), "English: the dog\nGerman: der Hund\n"] * 3


def _byte_level(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _sentencepiece() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    return tok


def _build(style: str, out) -> PreTrainedTokenizerFast:
    if style == "llama3":
        tok = _byte_level(["<|begin_of_text|>", "<|end_of_text|>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
        kw = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    elif style == "qwen":
        tok = _byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        kw = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    else:
        tok = _sentencepiece()
        tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        kw = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    PreTrainedTokenizerFast(tokenizer_object=tok, **kw).save_pretrained(out)
    return load_tokenizer(out)


STYLES = ["llama3", "qwen", "sentencepiece"]


@pytest.fixture(scope="module", params=STYLES)
def tok(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory.mktemp(request.param))


def test_the_styles_are_what_they_claim(tok):
    adds_bos = tok("x y").input_ids[0] == tok.bos_token_id if tok.bos_token_id is not None else False
    style = {"<|end_of_text|>": "llama3", "<|im_end|>": "qwen", "</s>": "sentencepiece"}[tok.eos_token]
    assert adds_bos == (style != "qwen")
    assert (tok.pad_token_id == tok.eos_token_id) == (style != "qwen")  # no pad token: load_tokenizer pads with EOS
    if style == "sentencepiece":  # its decoder drops a leading space: what generation must not rely on
        assert tok.decode(tok("    return y", add_special_tokens=False).input_ids) == "   return y"


def test_packing_adds_no_bos_and_closes_every_document_with_one_eos(tok):
    packed = pack_records(RECORDS, tok, 16, "code_qa")
    ids, mask, docs = (t.reshape(-1).tolist() for t in (packed.input_ids, packed.loss_mask, packed.doc_ids))
    if tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id:
        assert tok.bos_token_id not in ids
    for row, record in enumerate(RECORDS):
        doc = [i for i, d in zip(ids, docs, strict=True) if d == row]
        answer = [i for i, d, m in zip(ids, docs, mask, strict=True) if d == row and m]
        q = tok(record["question"], add_special_tokens=False).input_ids
        a = tok(record["answer"], add_special_tokens=False).input_ids
        assert doc == q + a + [tok.eos_token_id]  # exactly one EOS, after the answer
        assert answer == a + [tok.eos_token_id]  # the answer mask: answer tokens and the EOS closing them
    pad = [i for i, d in zip(ids, docs, strict=True) if d == -1]
    assert pad == [tok.eos_token_id] * len(pad) and not any(m for m, d in zip(mask, docs, strict=True) if d == -1)


def test_validation_ce_counts_the_answer_targets_the_masks_select(tok):
    packed = pack_records(RECORDS, tok, 16, "code_qa")
    model = tiny_model(tok)
    metrics, counts = validation_ce(model, packed, batch_size=2)
    # answer targets: every masked token except one that opens a chunk (it has no prediction in the chunk)
    assert counts["answer_tokens"] == int(packed.loss_mask[:, 1:].sum())
    assert counts["tokens"] == int((packed.doc_ids[:, 1:] >= 0).sum())
    with torch.no_grad():
        logp = model(input_ids=packed.input_ids).logits.float().log_softmax(-1)
    nll = [-float(logp[c, j - 1, packed.input_ids[c, j]]) for c in range(len(packed))
           for j in range(1, packed.input_ids.shape[1]) if packed.loss_mask[c, j]]
    assert metrics["eval/ce_answer"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def _forced(tok, prompts, texts, *, extra_eos=True):
    """``generate`` with the model's own ``generate`` replaced by one that writes ``texts`` (then EOS and
    garbage), so the post-processing of real token sequences is what is tested."""
    model = tiny_model(tok)
    filler = tok("zzz", add_special_tokens=False).input_ids

    def fixed(input_ids, **kwargs):
        rows = []
        for i in range(input_ids.shape[0]):
            ids = tok(texts[i], add_special_tokens=False).input_ids + ([tok.eos_token_id] if extra_eos else [])
            rows.append(ids + filler * 4)
        width = max(len(r) for r in rows)
        tail = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, tail], dim=1)

    model.generate = fixed
    return generate(model, tok, prompts, kind="code_qa" if "def" in prompts[0] else "translation",
                    max_new_tokens=64)


def test_a_completion_ends_at_eos_and_keeps_its_indentation(tok):
    prompts = [RECORDS[0]["question"], RECORDS[1]["question"]]
    gens = _forced(tok, prompts, [RECORDS[0]["answer"], RECORDS[1]["answer"]])
    assert gens.texts == [RECORDS[0]["answer"], RECORDS[1]["answer"]]
    lengths = [len(tok(r["answer"], add_special_tokens=False).input_ids) + 1 for r in RECORDS[:2]]
    assert gens.completion_mask.sum(dim=1).tolist() == lengths  # up to and including the first EOS
    for row, n in enumerate(lengths):
        assert gens.completion_ids[row, n - 1] == tok.eos_token_id
        assert (gens.completion_ids[row, n:] == tok.pad_token_id).all()
    # HumanEval-style assembly: prompt + completion + test runs, the two-line body keeps its indentation
    test = "def check(candidate):\n    assert candidate(1) == 2\n"
    assert check_program(prompts[0] + gens.texts[0], test, "inc", timeout_s=10).status == "passed"


def test_code_completion_stops_at_the_first_top_level_line(tok):
    gens = _forced(tok, [RECORDS[1]["question"]], ["    return a + b\n\nprint(add(1, 2))\n"])
    assert gens.texts == ["    return a + b\n\n"]


def test_translation_hypothesis_is_the_first_nonblank_line(tok):
    gens = _forced(tok, [RECORDS[2]["question"]], [" die Katze\nEnglish: the dog"], extra_eos=False)
    assert gens.texts == ["die Katze"]
    gens = _forced(tok, [RECORDS[2]["question"]], ["\n die Katze"])
    assert gens.texts == ["die Katze"]
