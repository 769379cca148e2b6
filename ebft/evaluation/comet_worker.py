"""COMET scoring worker: runs inside the COMET environment (``.venv-comet``), never in the main one.

Started by :func:`ebft.evaluation.comet_bridge.score_comet` as::

    <comet python> -m ebft.evaluation.comet_worker --model M --input in.jsonl --output out.json \\
        [--batch-size 16] [--gpus 0] [--model-storage DIR] [--seed 0]

``in.jsonl`` holds one ``{"src", "mt", "ref"}`` object per line (``ref`` may be absent on every line for
reference-free models). ``out.json`` is written atomically as
``{"scores": [...], "system_score": float, "model": str, "comet_version": str, "n": int}``.

``--model`` is one of

* a checkpoint file (``<root>/checkpoints/model.ckpt``, with ``<root>/hparams.yaml`` next to ``checkpoints/``),
* a model directory that contains ``checkpoints/model.ckpt`` (a downloaded Hub snapshot, or
  :mod:`ebft.evaluation.comet_tiny`'s output),
* a Hub id such as ``Unbabel/wmt22-comet-da``, resolved with ``comet.download_model``: from the cache only
  when ``HF_HUB_OFFLINE=1`` (the bridge's default), downloaded otherwise.

Models are always loaded with ``local_files_only=True``, so the encoder's tokenizer/config
(``xlm-roberta-large`` for wmt22-comet-da) must already be in the HF cache or ``hparams.yaml`` must point at
a local folder.

Dependencies: the standard library, plus ``comet``/``torch`` imported inside :func:`score`. This module must
not import other ``ebft`` modules: the COMET environment has no ebft install, only the repository root on
``PYTHONPATH`` (and ebft's main dependencies would not import there anyway).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

CKPT_RELPATH = Path("checkpoints") / "model.ckpt"
# "org/name" or a bare legacy COMET name; anything with a path look (absolute, ./, ../, *.ckpt, more than
# one "/") is treated as a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

EXIT_USAGE = 2  # bad input / missing model: the bridge reports stderr as is


class WorkerError(Exception):
    """Input or model problem; reported on stderr with exit code 2 (no traceback)."""


def is_hub_id(model: str) -> bool:
    """True if ``model`` is not an existing path and looks like a Hub id (``org/name``) rather than a path."""
    return not os.path.exists(model) and not model.endswith(".ckpt") and bool(_HUB_ID.match(model))


def resolve_local_checkpoint(model: str) -> Path | None:
    """The ``model.ckpt`` of a local ``model`` (file or directory); None for a Hub id; WorkerError if missing."""
    if is_hub_id(model):
        return None
    path = Path(model).expanduser()
    if path.is_dir():
        ckpt = path / CKPT_RELPATH
        if not ckpt.is_file():
            raise WorkerError(f"COMET model directory {path} has no {CKPT_RELPATH}")
        path = ckpt
    elif not path.is_file():
        raise WorkerError(
            f"COMET model not found: {model} (expected a checkpoint file <root>/{CKPT_RELPATH}, a directory "
            f"containing {CKPT_RELPATH}, or a Hub id such as Unbabel/wmt22-comet-da)"
        )
    hparams = path.resolve().parents[1] / "hparams.yaml"
    if not hparams.is_file():
        raise WorkerError(f"COMET checkpoint {path} has no hparams.yaml at {hparams} (COMET reads it from there)")
    return path.resolve()


def read_samples(path: str | Path) -> list[dict[str, str]]:
    """Samples from a JSONL file; every line needs string ``src`` and ``mt``, and ``ref`` on all lines or none."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            keys = ("src", "mt", "ref") if isinstance(rec, dict) and "ref" in rec else ("src", "mt")
            if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in keys):
                raise WorkerError(f"{path}:{lineno}: expected string fields {', '.join(keys)}")
            samples.append({k: rec[k] for k in keys})
    if not samples:
        raise WorkerError(f"{path}: no samples")
    if len({"ref" in s for s in samples}) > 1:
        raise WorkerError(f"{path}: 'ref' must be given for every sample or for none")
    return samples


def write_json_atomic(obj: dict, path: str | Path) -> None:
    """Write JSON to ``path`` through a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def score(
    samples: list[dict[str, str]],
    model: str,
    *,
    batch_size: int = 16,
    gpus: int = 0,
    model_storage: str | None = None,
    seed: int = 0,
) -> dict:
    """Score ``samples`` with the COMET ``model``; the result dict written to ``--output``."""
    ckpt = resolve_local_checkpoint(model)  # before importing comet: path errors come back fast

    import comet
    import torch

    torch.manual_seed(seed)
    if ckpt is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        try:
            ckpt = Path(comet.download_model(model, saving_directory=model_storage, local_files_only=offline))
        except KeyError as e:
            where = "in the local cache (HF_HUB_OFFLINE=1)" if offline else "on the Hub"
            raise WorkerError(
                f"COMET model {model!r} is no local path and was not found as a Hub id {where}: {e}"
            ) from None
    metric = comet.load_from_checkpoint(str(ckpt), local_files_only=True)
    pred = metric.predict(
        samples,
        batch_size=batch_size,
        gpus=gpus,
        accelerator="cpu" if gpus == 0 else "auto",
        progress_bar=False,
        num_workers=0,
    )
    scores = [float(s) for s in pred.scores]
    if len(scores) != len(samples):
        raise RuntimeError(f"COMET returned {len(scores)} scores for {len(samples)} samples")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise RuntimeError(f"COMET returned non-finite scores at indices {bad[:10]}")
    return {
        "scores": scores,
        "system_score": float(pred.system_score),
        "model": str(ckpt),
        "comet_version": _comet_version(),
        "n": len(scores),
    }


def _comet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unbabel-comet")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ebft.evaluation.comet_worker", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint file, model directory or Hub id")
    p.add_argument("--input", required=True, help="JSONL with src/mt/ref per line")
    p.add_argument("--output", required=True, help="JSON result (written atomically)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gpus", type=int, default=0, choices=(0, 1), help="0 = CPU; multi-GPU (DDP) is not supported")
    p.add_argument("--model-storage", default=None, help="saving_directory for comet.download_model (Hub ids)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        samples = read_samples(args.input)
        result = score(
            samples,
            args.model,
            batch_size=args.batch_size,
            gpus=args.gpus,
            model_storage=args.model_storage,
            seed=args.seed,
        )
    except WorkerError as e:
        print(f"comet_worker: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    write_json_atomic(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
