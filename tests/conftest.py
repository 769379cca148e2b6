"""Shared pytest setup: every test runs offline with a private Hugging Face cache."""

from __future__ import annotations

import os
import tempfile

# Set before transformers/datasets are imported anywhere: they read these at import time.
_HF_HOME = tempfile.mkdtemp(prefix="ebft-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
