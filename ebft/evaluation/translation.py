"""Translation quality: greedy generation on the test split, corpus BLEU and chrF (sacrebleu), COMET.

Per direction ``src-tgt`` the hypotheses are the first line of each generation. BLEU uses sacrebleu's
``13a`` tokenizer (``zh`` for Chinese targets), chrF the default settings. COMET runs in its own
environment through :mod:`ebft.evaluation.comet_bridge` (unbabel-comet cannot share an environment with
transformers 5). Metric names:

* the in-distribution test set (records whose ``origin`` is not out-of-distribution):
  ``eval/{bleu,chrf,comet}`` (macro average over directions), ``eval/{metric}/en-xx``, ``.../xx-en``
  (macro over directions out of / into English) and ``eval/{metric}/{src}-{tgt}`` per direction;
* the out-of-distribution set (``origin`` in ``ood_origins``: Django catalogs in the tiny default, MTNT in
  the paper config): the same under ``eval/ood/...``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

DEFAULT_OOD_ORIGINS = ("django", "mtnt")


def bleu_tokenizer(tgt_lang: str) -> str:
    return "zh" if tgt_lang.startswith("zh") else "13a"


def corpus_scores(hyps: list[str], refs: list[str], tgt_lang: str) -> dict[str, float]:
    import sacrebleu

    return {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tokenizer(tgt_lang)).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
    }


def aggregate_directions(per_dir: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """Per-direction scores -> metric dict with macro averages (all, en-xx, xx-en)."""
    out: dict[str, float] = {}
    metrics = sorted({m for scores in per_dir.values() for m in scores})
    for metric in metrics:
        groups: dict[str, list[float]] = defaultdict(list)
        for direction, scores in per_dir.items():
            if metric not in scores:
                continue
            src, tgt = direction.split("-")
            out[f"{prefix}{metric}/{direction}"] = scores[metric]
            groups["all"].append(scores[metric])
            if src == "en":
                groups["en-xx"].append(scores[metric])
            if tgt == "en":
                groups["xx-en"].append(scores[metric])
        for group, values in groups.items():
            key = f"{prefix}{metric}" if group == "all" else f"{prefix}{metric}/{group}"
            out[key] = sum(values) / len(values)
    return out


def evaluate_translation(
    records: list[dict[str, Any]],
    hypotheses: list[str],
    *,
    comet_model: str | None = None,
    comet_batch_size: int = 16,
    comet_gpus: int = 0,
    ood_origins: tuple[str, ...] = DEFAULT_OOD_ORIGINS,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Score hypotheses (one per record); returns (metrics, per-direction details)."""
    comet_scores: list[float] | None = None
    if comet_model:
        from ebft.evaluation.comet_bridge import score_comet

        triples = [{"src": r["source"], "mt": h, "ref": r["reference"]} for r, h in zip(records, hypotheses,
                                                                                            strict=True)]
        comet_scores = score_comet(triples, comet_model, batch_size=comet_batch_size, gpus=comet_gpus)["scores"]
    sets: dict[str, dict[str, list[int]]] = {"": defaultdict(list), "ood/": defaultdict(list)}
    for i, r in enumerate(records):
        prefix = "ood/" if r.get("origin") in ood_origins else ""
        sets[prefix][f"{r['src_lang']}-{r['tgt_lang']}"].append(i)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for prefix, directions in sets.items():
        per_dir = {}
        for direction, idx in sorted(directions.items()):
            hyps = [hypotheses[i] for i in idx]
            refs = [records[i]["reference"] for i in idx]
            scores = corpus_scores(hyps, refs, records[idx[0]]["tgt_lang"])
            if comet_scores is not None:
                scores["comet"] = sum(comet_scores[i] for i in idx) / len(idx)
            per_dir[direction] = scores
            details[f"{prefix}{direction}"] = {"n": len(idx), **scores,
                                               "examples": [{"source": records[i]["source"], "hyp": hypotheses[i],
                                                             "ref": records[i]["reference"]} for i in idx[:3]]}
        metrics.update(aggregate_directions(per_dir, f"eval/{prefix}"))
    return metrics, details
