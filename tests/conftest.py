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

# EBFT_TEST_DEVICE=cuda runs the tensor tests with CUDA as torch's default device (the GPU check in
# benchmarks/gpu_check.sh); the default suite never needs a GPU.
if os.environ.get("EBFT_TEST_DEVICE"):
    import torch

    _device = os.environ["EBFT_TEST_DEVICE"]
    torch.set_default_device(_device)
    _Generator = torch.Generator

    class _DefaultDeviceGenerator(_Generator):
        """Generators follow the default device too (tests write torch.Generator() for CPU)."""

        def __new__(cls, device=None):
            return _Generator(device if device is not None else _device)

    torch.Generator = _DefaultDeviceGenerator
