"""Conditional feature-matching (CFM) loss, unbiased n-sample estimator: an ``evaluate`` metric.

Per example, with sample features phi_1..phi_n (n >= 2) and ground-truth features psi::

    CFM_hat = 1/(n(n-1)) sum_{i != j} <phi_i, phi_j> - 2/n sum_i <phi_i, psi> + <psi, psi>

an unbiased estimate of ||E phi - psi||^2. The numbers come from :func:`ebft.rewards.cfm_loss` (and
:func:`ebft.rewards.alignment` / :func:`ebft.rewards.diversity` for the reward terms), the functions the
pipeline's validation CFM uses. Features are taken as given (no whitening).
"""

from __future__ import annotations

import math
from collections import defaultdict

import datasets
import evaluate
import numpy as np
import torch

from ebft.rewards import alignment as _alignment
from ebft.rewards import cfm_loss as _cfm_loss
from ebft.rewards import diversity as _diversity

_CITATION = ""

_DESCRIPTION = """\
Unbiased conditional feature-matching loss ||E phi(c, y_hat) - phi(c, y)||^2 between the features of n >= 2
sampled completions and the features of the ground truth, averaged over examples (ebft's eval/cfm).
Individual estimates may be negative. Also reports the mean alignment reward 2 cos(phi_i, psi) and the mean
diversity reward 2/(n-1) sum_{j != i} <phi_i, phi_j> (ebft's eval/alignment and eval/diversity).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of examples; each a list of n >= 2 sample feature vectors of length D ([n, D]).
        n and D may differ between examples.
    references: list of examples; each the ground-truth feature vector of length D ([D]).
    return_per_example: if True, also return "cfm_per_example" (default False).
Returns:
    "cfm": mean over examples of the unbiased estimate;
    "cfm_se": its standard error (sample std / sqrt(N); NaN for a single example);
    "alignment": mean over examples of the mean alignment reward;
    "diversity": mean over examples of the mean diversity reward;
    "num_examples": N; and "cfm_per_example" (list of floats) if requested.
Examples:
    >>> metric = evaluate.load(metric_path("cfm"))
    >>> metric.compute(predictions=[[[1.0, 0.0], [0.0, 1.0]]], references=[[1.0, 0.0]])["cfm"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CFM(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                "references": datasets.Sequence(datasets.Value("float64")),
            }),
        )

    def _compute(self, predictions, references, return_per_example: bool = False):
        count = len(predictions)
        if count == 0:
            raise ValueError("cfm: no examples")
        cfm = np.empty(count)
        align = np.empty(count)
        div = np.empty(count)
        # Examples of equal shape are scored in one batch.
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        phis, psis = [], []
        for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
            try:
                phi = np.asarray(pred, dtype=np.float64)
            except ValueError as e:
                raise ValueError(f"cfm: example {i}: sample feature vectors must all have the same length") from e
            psi = np.asarray(ref, dtype=np.float64)
            if phi.ndim != 2 or phi.shape[0] < 2:
                raise ValueError(f"cfm: example {i}: predictions must be [n, D] with n >= 2, got shape {phi.shape}")
            if psi.shape != (phi.shape[1],):
                raise ValueError(f"cfm: example {i}: references must be [D] = [{phi.shape[1]}], got {psi.shape}")
            phis.append(phi)
            psis.append(psi)
            groups[phi.shape].append(i)
        for idx in groups.values():
            phi = torch.from_numpy(np.stack([phis[i] for i in idx]))
            psi = torch.from_numpy(np.stack([psis[i] for i in idx]))
            cfm[idx] = _cfm_loss(phi, psi).numpy()
            align[idx] = _alignment(phi, psi).mean(dim=-1).numpy()
            div[idx] = _diversity(phi).mean(dim=-1).numpy()
        out: dict[str, object] = {
            "cfm": float(cfm.mean()),
            "cfm_se": float(cfm.std(ddof=1) / math.sqrt(count)) if count > 1 else float("nan"),
            "alignment": float(align.mean()),
            "diversity": float(div.mean()),
            "num_examples": count,
        }
        if return_per_example:
            out["cfm_per_example"] = [float(x) for x in cfm]
        return out
