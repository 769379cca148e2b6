"""COMET scoring through the two-environment bridge, with a tiny random COMET checkpoint built offline.

The checkpoint is built once per module in the COMET env (``ebft.evaluation.comet_tiny``) and scored through
:func:`ebft.evaluation.comet_bridge.score_comet`, the code path the real model uses. Without ``.venv-comet``
(``bash scripts/setup_comet.sh``) the COMET tests are skipped, unless ``EBFT_REQUIRE_COMET=1`` (CI), which turns
a missing environment into a failure.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from ebft.evaluation import comet_bridge
from ebft.evaluation.comet_bridge import CometError, comet_python, score_comet
from tests.helpers import HANG_GUARD_S

TRIPLES = [
    {"src": "I have three apples.", "mt": "Ich habe drei Äpfel.", "ref": "Ich habe drei Äpfel."},
    {"src": "The weather is nice today.", "mt": "Das Wetter.", "ref": "Das Wetter ist heute schön."},
    {"src": "She reads a book in the garden.", "mt": "Sie liest ein Buch.", "ref": "Sie liest ein Buch im Garten."},
    {"src": "Twenty-one.", "mt": "Zwei und zwanzig", "ref": "Einundzwanzig."},
]


@pytest.fixture(scope="module")
def comet_py() -> str:
    try:
        return comet_python()
    except FileNotFoundError as e:
        if os.environ.get("EBFT_REQUIRE_COMET", "") not in ("", "0"):
            pytest.fail(f"EBFT_REQUIRE_COMET is set but the COMET environment is missing: {e}")
        pytest.skip(f"COMET environment missing (run `bash scripts/setup_comet.sh`): {e}")


@pytest.fixture(scope="module")
def tiny_comet(comet_py, tmp_path_factory) -> Path:
    """Checkpoint file of a tiny random RegressionMetric, built offline in the COMET env."""
    root = tmp_path_factory.mktemp("comet")
    texts = root / "texts.txt"
    texts.write_text("\n".join(t[k] for t in TRIPLES for k in ("src", "mt", "ref")) * 5, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(comet_bridge.REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [comet_py, "-m", "ebft.evaluation.comet_tiny", str(root / "tiny"), "--texts", str(texts)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = Path(proc.stdout.strip().splitlines()[-1])
    assert ckpt == root / "tiny" / "checkpoints" / "model.ckpt" and ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def first_scores(tiny_comet) -> dict:
    return score_comet(TRIPLES, str(tiny_comet), batch_size=8)


def test_scores_one_finite_score_per_triple(first_scores, tiny_comet):
    scores = first_scores["scores"]
    assert len(scores) == len(TRIPLES)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert first_scores["system_score"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
    assert first_scores["model"] == str(tiny_comet)
    assert first_scores["comet_version"] == "2.2.7"


def test_deterministic(first_scores, tiny_comet):
    again = score_comet(TRIPLES, str(tiny_comet), batch_size=8)
    assert again["scores"] == first_scores["scores"]
    assert again["system_score"] == first_scores["system_score"]


def test_model_directory_and_input_order(first_scores, tiny_comet):
    """A directory holding checkpoints/model.ckpt works too, and scores follow the input order."""
    rev = score_comet(TRIPLES[::-1], str(tiny_comet.parents[1]), batch_size=8)
    assert rev["scores"] == pytest.approx(first_scores["scores"][::-1], abs=1e-5)


def test_missing_model_path(tmp_path):
    missing = tmp_path / "nope" / "checkpoints" / "model.ckpt"
    with pytest.raises(FileNotFoundError, match="COMET model not found"):
        score_comet(TRIPLES, str(missing))
    with pytest.raises(FileNotFoundError, match="has no checkpoints/model.ckpt"):
        score_comet(TRIPLES, str(tmp_path))


def test_worker_error_carries_stderr(comet_py):
    """A Hub id that is not cached fails offline inside the worker; its stderr comes back in the error."""
    with pytest.raises(CometError, match=r"(?s)exit 2.*Unbabel/not-a-cached-model.*local cache"):
        score_comet(TRIPLES[:1], "Unbabel/not-a-cached-model")


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        score_comet([], "unused")
    with pytest.raises(ValueError, match="triple 1"):
        score_comet([TRIPLES[0], {"src": "a", "mt": "b"}], "unused")
    with pytest.raises(ValueError, match="gpus"):
        score_comet(TRIPLES, "unused", gpus=2)


def test_comet_python_missing_names_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv("EBFT_COMET_PYTHON", raising=False)
    monkeypatch.setenv("EBFT_COMET_VENV", str(tmp_path / "no-venv"))
    with pytest.raises(FileNotFoundError, match=r"EBFT_COMET_PYTHON.*no-venv/bin/python"):
        comet_python()
    monkeypatch.setenv("EBFT_COMET_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(FileNotFoundError, match="EBFT_COMET_PYTHON"):
        comet_python()


def test_two_builds_from_the_same_texts_are_identical(comet_py, tmp_path):
    """The Unigram trainer orders the single-character pieces it adds by a per-process hash; the canonical
    form hands their scores out by character frequency, so two processes build the same tokenizer and the
    same scores (before, the out-of-distribution COMET of the tiny default moved in the third decimal)."""
    from ebft.data.prepare import prepare_task

    data = tmp_path / "data"
    prepare_task("translation", {"source": "synthetic_translation", "sizes": {"train": 400, "valid": 2, "test": 2},
                                 "pairs": ["en-de", "en-fr"], "real_test": True}, data)
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    ckpts = [Path(comet_bridge.build_tiny_checkpoint(records, tmp_path / f"b{i}", 0).splitlines()[-1])
             for i in range(2)]
    tokenizers = [(c.parents[1] / "encoder" / "tokenizer.json").read_text() for c in ckpts]
    assert tokenizers[0] == tokenizers[1]
    scores = [score_comet(TRIPLES, str(c), batch_size=8)["scores"] for c in ckpts]
    assert scores[0] == scores[1]
