"""Task datasets: one record schema, offline generators for the tiny default, and hub loaders.

Every task is prepared into ``results/data/{task}/{train,valid,test}.jsonl`` (one record per line, see
:mod:`ebft.data.records`) plus a ``manifest.json`` by :func:`prepare_task`. Sources:
:mod:`~ebft.data.code_qa` (synthetic Python problems with unit tests), :mod:`~ebft.data.code_unstructured`
(standard-library source files), :mod:`~ebft.data.translation` (num2words sentence templates and Django's
gettext catalogs) and :mod:`~ebft.data.hub` (Hugging Face datasets).
"""

from typing import Any

__all__ = ["prepare_task", "read_jsonl", "write_jsonl"]


def __getattr__(name: str) -> Any:
    # Lazy: importing ebft.data.packing (training) must not pull in the generators' dependencies.
    if name == "prepare_task":
        from ebft.data.prepare import prepare_task

        return prepare_task
    if name in ("read_jsonl", "write_jsonl"):
        from ebft.data import jsonl

        return getattr(jsonl, name)
    raise AttributeError(name)
