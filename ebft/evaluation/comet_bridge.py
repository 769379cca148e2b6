"""COMET scoring from the main environment, through a subprocess in the separate COMET environment.

``unbabel-comet`` 2.2.7 pins ``transformers<5``, ``huggingface-hub<1`` and ``numpy<2``, which clash with the
main environment (transformers 5). COMET therefore lives in its own venv (``.venv-comet``, created by
``scripts/setup_comet.sh``; ``envs/comet.yaml`` for ``--sdm conda``), and this module, which imports nothing from
COMET, runs :mod:`ebft.evaluation.comet_worker` there::

    <comet python> -m ebft.evaluation.comet_worker --model M --input in.jsonl --output out.json ...

with ``PYTHONPATH=<repo root>`` (ebft is not installed in the COMET env; the worker is stdlib + comet only) and,
by default, ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``. See docs/comet.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ebft.evaluation.comet_worker import WorkerError, resolve_local_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PYTHON = "EBFT_COMET_PYTHON"
ENV_VENV = "EBFT_COMET_VENV"  # also honoured by scripts/setup_comet.sh
DEFAULT_VENV = ".venv-comet"
STDERR_TAIL_CHARS = 4000


class CometError(RuntimeError):
    """The COMET worker failed, timed out or returned something unusable; the message has its stderr tail."""


def comet_python() -> str:
    """Path of the COMET environment's python.

    Resolution order: ``$EBFT_COMET_PYTHON`` (a path, or a command name looked up on PATH), then
    ``$EBFT_COMET_VENV/bin/python`` (relative to the repository root unless absolute), then
    ``<repo>/.venv-comet/bin/python``. Raises FileNotFoundError naming what was tried.
    """
    explicit = os.environ.get(ENV_PYTHON)
    if explicit:
        found = explicit if os.sep in explicit else shutil.which(explicit)
        if found and os.path.isfile(found) and os.access(found, os.X_OK):
            return str(found)
        raise FileNotFoundError(f"${ENV_PYTHON}={explicit!r} is not an executable python")
    venv = Path(os.environ.get(ENV_VENV) or DEFAULT_VENV)
    venv = venv if venv.is_absolute() else REPO_ROOT / venv
    candidate = venv / "bin" / "python"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise FileNotFoundError(
        f"COMET environment not found: ${ENV_PYTHON} is not set and {candidate} does not exist. "
        f"Create it with `bash scripts/setup_comet.sh` or set ${ENV_PYTHON} to the python of an environment "
        f"with unbabel-comet (requirements/comet.txt, envs/comet.yaml)."
    )


def _validate(triples: list[dict]) -> list[dict[str, str]]:
    if not triples:
        raise ValueError("score_comet needs at least one (src, mt, ref) triple")
    with_ref = "ref" in triples[0]
    keys = ("src", "mt", "ref") if with_ref else ("src", "mt")
    out = []
    for i, t in enumerate(triples):
        if not isinstance(t, dict) or ("ref" in t) != with_ref or not all(isinstance(t.get(k), str) for k in keys):
            raise ValueError(f"triple {i}: expected string fields {', '.join(keys)} (ref on all triples or none)")
        out.append({k: t[k] for k in keys})
    return out


def _tail(text: str | bytes | None, n: int = STDERR_TAIL_CHARS) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def score_comet(
    triples: list[dict],
    model: str,
    *,
    batch_size: int = 16,
    gpus: int = 0,
    python: str | None = None,
    timeout_s: float | None = 4 * 3600,
    model_storage: str | None = None,
    offline: bool = True,
    seed: int = 0,
) -> dict:
    """Score ``triples`` (dicts with ``src``, ``mt``, ``ref``) with the COMET ``model``.

    ``model`` is a checkpoint file (``<root>/checkpoints/model.ckpt`` with ``<root>/hparams.yaml``), a local
    directory that contains ``checkpoints/model.ckpt`` (e.g. a Hub snapshot downloaded into
    ``resources/hf/...``), or a Hub id such as ``Unbabel/wmt22-comet-da``. A Hub id is resolved by the worker
    with ``comet.download_model(..., saving_directory=model_storage)``: from the local cache only while
    ``offline`` (the default), downloaded otherwise (only where the network exists). ``ref`` may be left out
    of every triple for reference-free models.

    ``gpus`` is 0 (CPU) or 1; COMET's multi-GPU (DDP) predict is not supported here. ``python`` overrides
    :func:`comet_python`. Returns the worker's JSON: ``{"scores": [float per triple, in input order],
    "system_score": mean of scores, "model": resolved checkpoint path, "comet_version": str, "n": int}``.

    Raises ValueError for bad input, FileNotFoundError for a missing local model or COMET environment, and
    :class:`CometError` (with the worker's stderr tail) when the worker fails or exceeds ``timeout_s``.
    """
    samples = _validate(triples)
    if gpus not in (0, 1):
        raise ValueError(f"gpus must be 0 (CPU) or 1, got {gpus}; multi-GPU COMET scoring is not supported")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        ckpt = resolve_local_checkpoint(model)  # None for a Hub id
    except WorkerError as e:
        raise FileNotFoundError(str(e)) from None
    python = python or comet_python()

    env = dict(os.environ)
    # Only the repository root: the main env's PYTHONPATH entries must not leak into the COMET interpreter.
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"

    with tempfile.TemporaryDirectory(prefix="ebft-comet-") as tmp:
        inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.json"
        with open(inp, "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        cmd = [python, "-m", "ebft.evaluation.comet_worker", "--model", str(ckpt or model)]
        cmd += ["--input", str(inp), "--output", str(out), "--batch-size", str(batch_size), "--gpus", str(gpus)]
        cmd += ["--seed", str(seed)]
        if model_storage is not None:
            cmd += ["--model-storage", str(model_storage)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            raise CometError(f"COMET worker timed out after {timeout_s} s; stderr tail:\n{_tail(e.stderr)}") from None
        if proc.returncode != 0:
            raise CometError(
                f"COMET worker failed (exit {proc.returncode}): {' '.join(cmd)}\nstderr tail:\n{_tail(proc.stderr)}"
            )
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CometError(f"COMET worker wrote no readable result ({e}); stderr tail:\n{_tail(proc.stderr)}") from e

    scores = result.get("scores")
    if not isinstance(scores, list) or len(scores) != len(samples):
        raise CometError(f"COMET worker returned {len(scores or [])} scores for {len(samples)} triples")
    if not all(isinstance(s, int | float) and math.isfinite(s) for s in scores):
        raise CometError("COMET worker returned non-finite scores")
    result["system_score"] = float(result["system_score"])
    return result


def build_tiny_checkpoint(records: list[dict], out: str | Path, seed: int = 0) -> str:
    """Build the tiny random COMET checkpoint offline in the COMET environment
    (:mod:`ebft.evaluation.comet_tiny`), its tokenizer trained on the sources and references of ``records``.
    Returns what the builder printed."""
    lines = sorted({text for r in records for text in (r.get("source", ""), r.get("reference", "")) if text})
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [comet_python(), "-m", "ebft.evaluation.comet_tiny", str(out), "--texts", fh.name, "--seed", str(seed)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny COMET checkpoint failed:\n{_tail(done.stderr, 3000)}")
    return done.stdout.strip()
