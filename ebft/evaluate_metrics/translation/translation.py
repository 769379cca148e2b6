"""Corpus BLEU and chrF as ebft's translation evaluation computes them: an ``evaluate`` metric.

BLEU is sacrebleu's corpus BLEU with tokenizer ``zh`` for Chinese targets (``tgt_lang`` starting with "zh")
and ``13a`` otherwise; chrF is sacrebleu's corpus chrF with default settings. With one reference per
hypothesis the numbers come from :func:`ebft.evaluation.translation.corpus_scores`, the pipeline's function;
with several references sacrebleu is called the same way (same tokenizer choice).
"""

from __future__ import annotations

import datasets
import evaluate
import sacrebleu

from ebft.evaluation.translation import bleu_tokenizer as _bleu_tokenizer
from ebft.evaluation.translation import corpus_scores as _corpus_scores

_CITATION = """\
@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
  year = "2018",
  pages = "186--191",
}
@inproceedings{popovic-2015-chrf,
  title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
  author = "Popovi{\\'c}, Maja",
  booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
  year = "2015",
  pages = "392--395",
}
"""

_DESCRIPTION = """\
Corpus BLEU and chrF (sacrebleu) with ebft's settings: the BLEU tokenizer is "zh" when the target language is
Chinese and "13a" otherwise; chrF uses sacrebleu's defaults. Scores are on sacrebleu's 0-100 scale.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings.
    references: list with one reference string per hypothesis, or one list of reference strings per
        hypothesis (the same number for every hypothesis).
    tgt_lang: target-language code (e.g. "de", "zh", "zh-CN"); picks the BLEU tokenizer: "zh" if it starts
        with "zh", else "13a" (default None: "13a").
Returns:
    "bleu": corpus BLEU; "chrf": corpus chrF.
Examples:
    >>> metric = evaluate.load(metric_path("translation"))
    >>> metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    {'bleu': 100.00000000000004, 'chrf': 100.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Translation(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319", "https://aclanthology.org/W15-3049"],
        )

    def _compute(self, predictions, references, tgt_lang: str | None = None):
        lang = tgt_lang or ""
        if not references or isinstance(references[0], str):
            return _corpus_scores(list(predictions), list(references), lang)
        num_refs = {len(r) for r in references}
        if len(num_refs) != 1 or 0 in num_refs:
            raise ValueError(f"translation: every hypothesis needs the same number (>= 1) of references, "
                             f"got {sorted(num_refs)}")
        ref_streams = [list(stream) for stream in zip(*references, strict=True)]
        return {
            "bleu": sacrebleu.corpus_bleu(predictions, ref_streams, tokenize=_bleu_tokenizer(lang)).score,
            "chrf": sacrebleu.corpus_chrf(predictions, ref_streams).score,
        }
