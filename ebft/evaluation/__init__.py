"""Evaluations of trained models and their registry.

Each evaluation *group* writes one JSON result per evaluated model (schema: :mod:`ebft.evaluation.results`,
path: :data:`ebft.paths.EVAL_RESULT`). :data:`EVALUATIONS` says, per group, what its job reads and how it
is scheduled; the config module's evaluation plan, the workflow's evaluation rules (one job per model,
``eval_<task>`` and ``eval_<task>_ckpt``, generated from it by :func:`ebft.config.eval_rules`) and
``ebft evaluate <command>`` (which runs :mod:`ebft.evaluation.jobs`) all read it. This module does not import
torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Evaluation:
    """One evaluation group.

    ``split``: the task data split it reads (``None``: it ships its own problems, HumanEval).
    ``sections``: the ``evaluation.<section>`` config sections merged (left to right) into its settings.
    ``task_spec``: it needs the task's ``seq_len``/``kind``/``geometry``. ``feature_network``: it needs the
    frozen feature model. ``comet``: it needs the COMET checkpoint when one is configured.
    ``all_cores``: its job uses every core (sandboxed unit tests run in parallel workers), else one.
    ``universal``: every task gets it; otherwise a task lists it in ``tasks.<task>.evaluations``.
    ``checkpoints``: evaluated on declared checkpoints unless ``evaluation.<group>.checkpoints`` says no.
    ``kinds``: the task kinds (``tasks.<task>.kind``) it can evaluate; ``None``: every kind. A task that
    lists it with another kind is a config error when the DAG is built (:mod:`ebft.checks`).
    """

    group: str
    command: str  #: ``ebft evaluate <command>``
    summary: str
    split: str | None
    sections: tuple[str, ...]
    task_spec: bool = False
    feature_network: bool = False
    comet: bool = False
    all_cores: bool = False
    universal: bool = False
    checkpoints: bool = False
    kinds: tuple[str, ...] | None = None

    def settings(self, evaluation_config: dict, final: bool = True) -> dict:
        """The group's resolved settings from the config's ``evaluation`` section, for a final (or base) model
        or, with ``final=False``, a checkpoint.

        Sections merge left to right. ``final_max_chunks`` (the paper's 1k-chunk final evaluation) replaces
        ``max_chunks`` for final models; a later section that sets its own ``max_chunks`` drops an inherited
        ``final_max_chunks`` (CFM by length keeps its own chunk count).
        """
        out: dict = {}
        for section in self.sections:
            values = evaluation_config.get(section) or {}
            if "max_chunks" in values:
                out.pop("final_max_chunks", None)
            out.update(values)
        final_chunks = out.pop("final_max_chunks", None)
        if final and final_chunks is not None:
            out["max_chunks"] = final_chunks
        return out


EVALUATIONS: dict[str, Evaluation] = {
    e.group: e
    for e in (
        Evaluation("ce", "ce", "validation cross-entropy (all tokens and answer tokens)",
                   "valid", ("ce",), task_spec=True, universal=True, checkpoints=True),
        Evaluation("cfm", "cfm", "validation CFM loss (unbiased estimator, strided sampler, frozen features)",
                   "valid", ("cfm",), task_spec=True, feature_network=True, universal=True, checkpoints=True),
        Evaluation("cfm_by_length", "cfm-by-length", "validation CFM for each completion length in gen_lens",
                   "valid", ("cfm", "cfm_by_length"), task_spec=True, feature_network=True, universal=True),
        Evaluation("unit_tests", "unit-tests", "code_qa test split: greedy pass@1 and sampled pass@k (sandbox)",
                   "test", ("unit_tests",), all_cores=True, checkpoints=True, kinds=("code_qa",)),
        Evaluation("humaneval", "humaneval", "HumanEval pass@k in the sandbox (a model, or a samples file)",
                   None, ("humaneval",), all_cores=True, kinds=("code_qa", "unstructured")),
        Evaluation("translation", "translation", "BLEU / chrF (sacrebleu) and COMET (own environment), test split",
                   "test", ("translation",), comet=True, kinds=("translation",)),
    )
}

#: Groups every task gets, in order.
UNIVERSAL_EVALUATIONS: tuple[str, ...] = tuple(g for g, e in EVALUATIONS.items() if e.universal)

