"""Validation cross-entropy: token-level NLL (nats/token) on packed held-out chunks.

``eval/ce`` averages over every real token of the chunk (the whole document stream, as a language model
sees it), ``eval/ce_answer`` over answer tokens only (the targets of question/answer tasks; equal to
``eval/ce`` for unstructured data). Both are token-weighted means over all chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ebft.data.packing import Packed


@torch.no_grad()
def validation_ce(model: torch.nn.Module, packed: Packed, batch_size: int = 16) -> tuple[dict[str, float], dict]:
    """CE over all real tokens and over answer tokens of ``packed`` ([N, L] chunks); (metrics, token counts)."""
    model.eval()
    device = next(model.parameters()).device
    tot_all = tot_ans = n_all = n_ans = 0.0
    for i in range(0, len(packed), batch_size):
        ids = packed.input_ids[i : i + batch_size].to(device)
        answer = packed.loss_mask[i : i + batch_size, 1:].to(device).float()
        real = (packed.doc_ids[i : i + batch_size, 1:] >= 0).to(device).float()
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [b, L-1]
        tot_all += float((nll * real).sum())
        n_all += float(real.sum())
        tot_ans += float((nll * answer).sum())
        n_ans += float(answer.sum())
    metrics = {"eval/ce": tot_all / max(n_all, 1.0), "eval/ce_answer": tot_ans / max(n_ans, 1.0)}
    return metrics, {"chunks": len(packed), "tokens": int(n_all), "answer_tokens": int(n_ans)}
