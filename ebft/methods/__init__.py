"""The training methods and their registry: ``name -> (typed config, objective factory)``.

Everything that lists methods (the config module's run grid, the workflow's training rules, the CLI, the
result schema, the report's row order and colours) reads :data:`REGISTRY`. Each method lives in one module
of this package that defines

* ``CONFIG``: its :class:`~ebft.methods.base.MethodConfig` subclass (the method's own keys, typed);
* ``build(config, job) -> Objective``: the factory that loads what the objective needs (feature network,
  reference model, reward) for one :class:`TrainJob`.

The module is imported only when a config or an objective is built, so reading the registry (e.g. while
Snakemake plans the DAG) does not import torch. Adding a method: docs/architecture.md ("Adding a method").
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal


@dataclass(frozen=True)
class TrainJob:
    """One training run as a factory sees it (built by :func:`ebft.train.train` from the rule's arguments)."""

    task: str
    task_spec: Mapping[str, Any]  #: ``tasks.<task>`` without ``data``: kind, seq_len, geometry, embed_method
    init: str  #: model (directory or hub id) the run starts from; also the frozen KL reference
    seed: int
    feature_model: str | None = None  #: EBFT's frozen feature network (default: ``init``)
    variant: str | None = None  #: the variant's name (names the run for experiment trackers)
    #: dtype of the frozen networks (feature network, KL reference): ``bfloat16`` when the run trains with
    #: ``mixed_precision: bf16`` (they only run forward passes under autocast), else ``float32``
    frozen_dtype: str = "float32"


@dataclass(frozen=True)
class Method:
    """One registry entry.

    ``inputs``: what a training item is (``chunks``: packed ``seq_len`` token chunks; ``prompts``: records
    with a question, sampled from by the objective). ``feature_network``: the run needs the frozen feature
    model as an input. ``rewards``: for methods that need a verifier, the rewards each task kind supports
    (the first is the default); the method runs only on those kinds. ``None``: every kind.
    """

    name: str
    label: str  #: row label in tables and figures
    colour: str  #: figure colour
    module: str  #: defines CONFIG and build(config, job)
    inputs: Literal["chunks", "prompts"] = "chunks"
    feature_network: bool = False
    rewards: Mapping[str, tuple[str, ...]] | None = field(default=None)

    def _module(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def config_class(self) -> type:
        """The method's typed config class (imports the method's module)."""
        return self._module().CONFIG

    def config(self, params: Mapping[str, Any], where: str = "") -> Any:
        """Typed config of one resolved variant, validated (errors are prefixed with ``where``)."""
        return self.config_class.from_dict(params, where or f"methods.{self.name}")

    def build(self, config: Any, job: TrainJob) -> Any:
        """The method's objective (:class:`ebft.trainer.Objective`) for one run."""
        return self._module().build(config, job)

    def trains_on(self, kind: str) -> bool:
        return self.rewards is None or kind in self.rewards


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sft", "SFT", "#1f77b4", "ebft.methods.sft"),
        Method("rlvr", "RLVR", "#2ca02c", "ebft.methods.rlvr", inputs="prompts",
               rewards={"code_qa": ("unit_tests", "unit_test_fraction"), "translation": ("chrf", "bleu")}),
        Method("ebft", "EBFT", "#d62728", "ebft.methods.ebft", feature_network=True),
    )
}

#: Method names in report order.
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get_method(name: str) -> Method:
    """The registry entry of ``name``; a :class:`KeyError` that lists the known methods otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(METHODS)})") from None
