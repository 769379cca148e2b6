"""Task datasets: one record schema, offline generators for the tiny default, and hub loaders.

Every task is prepared into ``results/data/{task}/{train,valid,test}.jsonl`` (one record per line, see
:mod:`ebft.data.records`) plus a ``manifest.json`` by :func:`prepare_task`. Sources:
:mod:`~ebft.data.code_qa` (synthetic Python problems with unit tests), :mod:`~ebft.data.code_unstructured`
(standard-library source files), :mod:`~ebft.data.translation` (num2words sentence templates and Django's
gettext catalogs) and :mod:`~ebft.data.hub` (Hugging Face datasets).
"""

from ebft.data.jsonl import read_jsonl, write_jsonl
from ebft.data.prepare import prepare_task

__all__ = ["prepare_task", "read_jsonl", "write_jsonl"]
