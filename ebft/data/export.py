"""Write a prepared task as a hub-format dataset: the paper datasets' column names, one parquet file per split.

The rehearsal config (``config/rehearsal.yaml``) reads its generated tasks back through the hub loader
(:mod:`ebft.data.hub`, ``source: hub`` with a local path), exactly as the paper config reads the downloaded
datasets, so column mapping, unit-test normalisation, entry-point inference and the translation direction
column are exercised offline. Columns per kind (those of the paper's datasets):

==============  ===========================================================================================
``code_qa``     ``question``, ``answer``, ``unit_tests`` (a string holding a list of ``assert`` statements
                that call the function by name, as in OpenCodeInstruct)
``unstructured`` ``question`` (empty), ``answer`` (the document)
``translation`` ``question`` (the prompt), ``answer`` (the completion), ``source`` (the direction,
                ``"de-en"``, as in the paper's WMT22 test data; the loader maps it to ``lang_pair`` and
                takes the source sentence from the prompt)
==============  ===========================================================================================

Rule ``export_hub_data`` writes each ``hub_data.<name>`` section of a config (an offline generator's data
section) to ``results/hub_data/<name>`` (:func:`export_generated`).

Files: ``<out>/train.parquet``, ``<out>/validation.parquet``, ``<out>/test.parquet`` (``datasets`` names the
splits after the files), written atomically. Test records whose ``origin`` never occurs in the training split
(the real Django catalog pairs of the translation generator next to its synthetic ones) are an
out-of-distribution set, as MTNT is a dataset of its own in the paper: they go to ``<out>/ood.parquet`` (a
name ``datasets`` assigns to no split), which a task reads back with ``data.ood_test: {path:
<out>/ood.parquet, origin: <origin>}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ebft.data.jsonl import read_split

#: prepared split -> hub split name (``datasets`` infers it from the file name)
HUB_SPLITS: dict[str, str] = {"train": "train", "valid": "validation", "test": "test"}

#: record kind -> the hub columns it is written with (and the ``columns`` mapping that reads them back)
HUB_COLUMNS: dict[str, dict[str, str]] = {
    "code_qa": {"question": "question", "answer": "answer", "test": "unit_tests"},
    "unstructured": {"question": "question", "answer": "answer"},
    "translation": {"question": "question", "answer": "answer", "lang_pair": "source"},
}


def unit_test_list(test: str, entry_point: str) -> str:
    """The ``assert`` lines of a ``def check(candidate):`` test, calling ``entry_point`` by name, as the
    string of a Python list (OpenCodeInstruct's ``unit_tests`` format)."""
    asserts = [line.strip().replace("candidate(", f"{entry_point}(") for line in test.splitlines()
               if line.strip().startswith("assert ")]
    if not asserts:
        raise ValueError(f"no assert statements in the test of {entry_point!r}")
    return json.dumps(asserts)


def hub_row(rec: dict[str, Any], kind: str) -> dict[str, str]:
    """One record as a row with the paper dataset's columns (:data:`HUB_COLUMNS`)."""
    if kind == "code_qa":
        return {"question": rec["question"], "answer": rec["answer"],
                "unit_tests": unit_test_list(rec["test"], rec["entry_point"])}
    if kind == "unstructured":
        return {"question": rec.get("question", ""), "answer": rec["answer"]}
    if kind == "translation":
        return {"question": rec["question"], "answer": rec["answer"],
                "source": f"{rec['src_lang']}-{rec['tgt_lang']}"}
    raise ValueError(f"no hub format for records of kind {kind!r} (have: {', '.join(HUB_COLUMNS)})")


def write_hub_format(splits: dict[str, list[dict[str, Any]]], kind: str, out: str | Path) -> dict[str, int]:
    """Write ``{train, valid, test: [record, ...]}`` (records of ``kind``) as parquet files under ``out``, test
    records of an origin absent from ``train`` to ``ood.parquet``; returns the row count per file."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seen = {r.get("origin") for r in splits["train"]}
    files = {hub: [r for r in splits[split] if split != "test" or r.get("origin") in seen]
             for split, hub in HUB_SPLITS.items()}
    ood = [r for r in splits["test"] if r.get("origin") not in seen]
    if ood:
        files["ood"] = ood
    counts = {}
    for name, records in files.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".parquet", dir=out)
        os.close(fd)
        try:
            pd.DataFrame([hub_row(r, kind) for r in records]).to_parquet(tmp, index=False)
            os.replace(tmp, out / f"{name}.parquet")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        counts[name] = len(records)
    return counts


def export_prepared(data_dir: str | Path, kind: str, out: str | Path) -> dict[str, int]:
    """A prepared task (``<data_dir>/{train,valid,test}.jsonl``) in hub format under ``out``."""
    return write_hub_format({s: read_split(Path(data_dir) / f"{s}.jsonl", kind) for s in HUB_SPLITS}, kind, out)


def export_generated(name: str, data_cfg: dict[str, Any], out: str | Path) -> dict[str, int]:
    """Generate a dataset with an offline generator (``data_cfg``: a task ``data`` section with a generator
    ``source``, the ``hub_data.<name>`` section of the config), validate it and write it in hub format."""
    from ebft.data.prepare import SOURCE_KINDS, build_splits
    from ebft.data.records import validate_records

    if SOURCE_KINDS.get(data_cfg.get("source")) is None:
        raise ValueError(f"hub_data.{name}.source: {data_cfg.get('source')!r} is not an offline generator "
                         f"(have: {', '.join(k for k, v in SOURCE_KINDS.items() if v)})")
    kind, splits = build_splits(name, data_cfg)
    for split in HUB_SPLITS:
        validate_records(splits[split], kind, where=f"hub_data.{name}/{split}")
    return write_hub_format(splits, kind, out)
