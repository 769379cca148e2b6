"""Local Hugging Face ``evaluate`` metric modules for ebft's metrics (they work offline).

Each metric is a directory holding ``<name>/<name>.py`` (an ``evaluate.Metric`` subclass), which is what
``evaluate.load`` expects of a local path::

    import evaluate
    from ebft.evaluate_metrics import metric_path

    pass_at_k = evaluate.load(metric_path("pass_at_k"))
    pass_at_k.compute(predictions=[[True, False, False], [True, True, False]], k=[1, 2])

The modules compute their numbers with the pipeline's own functions (:func:`ebft.evaluation.code.pass_at_k`,
:func:`ebft.rewards.cfm_loss`, :func:`ebft.evaluation.translation.corpus_scores`), so they agree with it.

* ``pass_at_k``: unbiased pass@k from per-problem correctness (no code is executed);
  config ``"counts"`` takes per-problem ``num_samples`` / ``num_correct`` instead.
* ``cfm``: unbiased conditional feature-matching loss from sample and ground-truth features.
* ``translation``: corpus BLEU (tokenizer ``zh`` for Chinese targets, else ``13a``) and chrF via sacrebleu.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRIC_NAMES: tuple[str, ...] = ("pass_at_k", "cfm", "translation")

_ROOT = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """Directory of the metric module ``name``, to pass to ``evaluate.load``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown ebft evaluate metric {name!r}; available: {', '.join(METRIC_NAMES)}")
    return str(_ROOT / name)


def load(name: str, config_name: str | None = None, **kwargs: Any) -> Any:
    """``evaluate.load(metric_path(name), config_name, **kwargs)``."""
    import evaluate

    return evaluate.load(metric_path(name), config_name, **kwargs)


__all__ = ["METRIC_NAMES", "load", "metric_path"]
