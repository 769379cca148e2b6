"""Packing documents into fixed-length training chunks (docs/algorithm.md §1).

Each record is tokenised as ``question`` then ``answer`` (separately, no special tokens, no separator:
whatever whitespace the strings hold is all there is), documents are joined by one EOS token, and the
stream is cut into consecutive chunks of ``seq_len`` tokens. Three parallel tensors come out:

* ``input_ids``  [N, L]  token ids; the last chunk is right-padded with EOS;
* ``loss_mask``  [N, L]  1 where a token is a training target of the task kind: answer tokens and the EOS
  that ends an answer for question/answer data, every real token for unstructured data; 0 on padding;
* ``doc_ids``    [N, L]  row index of the document each token belongs to (-1 on padding).

Deliberate differences from the reference: the EOS after an answer is a target for QA data (so models
learn to stop), and padding never enters a loss (the reference scores its EOS padding; docs/algorithm.md §9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

#: Task kinds whose loss covers only the answer.
QA_KINDS = frozenset({"qa", "code_qa", "translation"})


@dataclass
class Packed:
    input_ids: torch.Tensor  # [N, L] long
    loss_mask: torch.Tensor  # [N, L] long (0/1)
    doc_ids: torch.Tensor  # [N, L] long

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "loss_mask": self.loss_mask[i], "doc_ids": self.doc_ids[i]}

    @property
    def num_target_tokens(self) -> int:
        return int(self.loss_mask.sum())


def pack_records(
    records: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    kind: str,
    *,
    max_chunks: int | None = None,
) -> Packed:
    """Pack ``records`` (dicts with ``question`` and ``answer``) into chunks of ``seq_len`` tokens."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; packing needs one to separate documents")
    answer_only = kind in QA_KINDS
    questions = tokenizer([r.get("question", "") for r in records], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r["answer"] for r in records], add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    mask: list[int] = []
    docs: list[int] = []
    limit = None if max_chunks is None else max_chunks * seq_len
    for row, (q, a) in enumerate(zip(questions, answers, strict=True)):
        ids.extend(q)
        mask.extend([0 if answer_only else 1] * len(q))
        ids.extend(a)
        mask.extend([1] * len(a))
        ids.append(eos)
        mask.append(1)
        docs.extend([row] * (len(q) + len(a) + 1))
        if limit is not None and len(ids) >= limit:
            break
    if not ids:
        raise ValueError("no tokens to pack: the record list is empty")
    pad = (-len(ids)) % seq_len
    ids.extend([eos] * pad)
    mask.extend([0] * pad)
    docs.extend([-1] * pad)
    n = len(ids) // seq_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    shape = (len(ids) // seq_len, seq_len)
    return Packed(
        input_ids=torch.tensor(ids, dtype=torch.long).view(shape)[:n].clone(),
        loss_mask=torch.tensor(mask, dtype=torch.long).view(shape)[:n].clone(),
        doc_ids=torch.tensor(docs, dtype=torch.long).view(shape)[:n].clone(),
    )
