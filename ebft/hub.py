"""Materialising hub models and datasets into ``resources/hf/{slug}`` (run where there is network).

GPU jobs then run with ``HF_HUB_OFFLINE=1`` and read local paths only. The slug of ``owner/name`` is
``owner--name`` so that paths stay flat and wildcard-safe.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def download(kind: str, repo_id: str, out: Path, *, revision: str | None = None) -> Path:
    """Snapshot ``repo_id`` (a model or dataset repository) into ``out`` atomically."""
    from huggingface_hub import snapshot_download

    if kind not in ("model", "dataset"):
        raise ValueError(f"kind must be 'model' or 'dataset', got {kind!r}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    log.info("downloading %s %s (revision %s) to %s", kind, repo_id, revision or "main", out)
    snapshot_download(repo_id, repo_type=kind, revision=revision, local_dir=str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def download_encoder_files(repo_id: str) -> None:
    """Put an encoder's config and tokenizer files into the Hugging Face cache (``HF_HOME``).

    A COMET checkpoint names its encoder (``xlm-roberta-large`` for wmt22-comet-da) and loads that
    encoder's config and tokenizer by name; with the cache on a shared filesystem, offline GPU jobs find them.
    """
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id, allow_patterns=["*.json", "*.model", "*.txt"])
