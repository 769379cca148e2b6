"""LoRA through ``peft`` (ebft/lora.py): only adapters train, saved models are merged, the strided code sees
through the wrapper, and a LoRA run resumes exactly."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from ebft.config import ConfigError, TrainConfig
from ebft.data.packing import Packed, pack_records
from ebft.data.prepare import prepare_task
from ebft.lora import ADAPTER_DIR, LoraSettings, is_peft, merged_state_dict, wrap
from ebft.methods import TrainJob
from ebft.methods.ebft import EBFTObjective
from ebft.methods.sft import SFTObjective
from ebft.modeling import backbone, lm_head, save_pretrained_atomic
from ebft.strided import StridedLayout, strided_generate
from ebft.train import train
from ebft.trainer import LATER_TRAIN_FIELDS, Trainer, _digest, fingerprint_parts
from tests.ddp_ebft_step import tiny_llama
from tests.helpers import TEXTS, tiny_model, tiny_tokenizer
from tests.test_strided import random_chunk
from tests.test_strided import tiny_model as strided_model

LORA = LoraSettings(r=4, alpha=8.0, target_modules="all-linear")


def adapted(model: torch.nn.Module, settings: LoraSettings = LORA, seed: int = 0) -> torch.nn.Module:
    """``model`` with LoRA adapters whose ``B`` is random (``peft`` starts it at zero: no effect), so the
    adapter changes what the model computes."""
    peft_model = wrap(model, settings)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return peft_model


def peft_keys(model_dir) -> list[str]:
    """The tensor names of a saved model's weights that only a ``peft`` model has."""
    with safe_open(model_dir / "model.safetensors", "pt") as fh:
        names = fh.keys()
    return [k for k in names if "lora_" in k or "base_layer" in k]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------- config
def test_lora_settings_are_typed_and_validated():
    cfg = TrainConfig.from_dict({"lora": {"r": 2, "alpha": 4, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}})
    assert cfg.lora == LoraSettings(r=2, alpha=4, dropout=0.1, target_modules=("q_proj", "v_proj"))
    assert TrainConfig.from_dict({"lora": None}).lora is None and TrainConfig.from_dict({}).lora is None
    peft_cfg = cfg.lora.peft_config()
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout) == (2, 4, 0.1)
    assert set(peft_cfg.target_modules) == {"q_proj", "v_proj"}
    for bad, match in [({"r": 0}, "lora.r must be a positive integer"), ({"alpha": 0}, "lora.alpha must be > 0"),
                       ({"dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
                       ({"target_modules": "attention"}, "lora.target_modules must be a list"),
                       ({"target_modules": []}, "lora.target_modules must be a non-empty list"),
                       ({"rank": 4}, r"lora: unknown keys \['rank'\]")]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig.from_dict({"lora": bad})


def test_full_fine_tuning_keeps_its_resume_fingerprint():
    """``lora`` unset leaves the config fingerprint as it was before the key existed (resume states stay valid)."""
    cfg = TrainConfig.from_dict({"lr": 1e-3})
    before = {k: v for k, v in asdict(cfg).items() if k not in LATER_TRAIN_FIELDS}  # fields added later, unset
    assert fingerprint_parts(cfg, {})["config"] == _digest({"train": before, "extra": {}})
    with_lora = TrainConfig.from_dict({"lr": 1e-3, "lora": {"r": 4}})
    assert fingerprint_parts(with_lora, {})["config"] != fingerprint_parts(cfg, {})["config"]


# ------------------------------------------------------------------------------------- model plumbing
def test_backbone_and_lm_head_unwrap_a_peft_model():
    plain = tiny_llama(0)
    peft_model = wrap(copy.deepcopy(plain), LORA)
    assert is_peft(peft_model) and not is_peft(plain)
    inner = peft_model.get_base_model()
    assert backbone(peft_model) is inner.model  # the decoder, not peft's LoraModel
    assert type(backbone(peft_model)) is type(backbone(plain))
    assert lm_head(peft_model) is inner.lm_head
    assert any("lora_A" in n for n, _ in backbone(peft_model).named_parameters())  # runs with its adapters


def test_lora_ebft_step_changes_only_adapter_weights(tmp_path):
    """One EBFT optimizer step (strided sampling, features, REINFORCE) on a LoRA policy: every base weight
    is unchanged, adapter weights moved."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 61, (4, 17), generator=g)
    data = Packed(ids, torch.ones_like(ids), torch.zeros_like(ids))
    objective = EBFTObjective({"num_samples": 3, "temperature": 0.8, "ce_coef": 0.1, "whitening": True},
                              context_len=4, stride=2, gen_len=3, feature_model=tiny_llama(1),
                              embed_method="last_token", seed=5)
    model = wrap(tiny_llama(0), LORA)
    before = snapshot(model)
    cfg = TrainConfig.from_dict({"lr": 1e-2, "max_steps": 1, "batch_size": 4, "micro_batch_size": 2,
                                 "warmup_steps": 0, "schedule": "constant_with_warmup", "log_every": 1, "seed": 5})
    Trainer(cfg, tmp_path / "run", show_progress=False).fit(model, None, data, objective)
    after = snapshot(model)
    assert before.keys() == after.keys()
    base = [n for n in before if "lora_" not in n]
    adapters = [n for n in before if "lora_" in n]
    assert base and adapters
    assert all(torch.equal(before[n], after[n]) for n in base)
    changed = [n for n in adapters if not torch.equal(before[n], after[n])]
    assert changed and all("lora_" in n for n in changed)


@pytest.mark.parametrize("build", ["llama_untied", "qwen2_tied"])
def test_merged_model_computes_what_the_peft_model_computes(tmp_path, build):
    tok = tiny_tokenizer(tmp_path)
    plain = tiny_llama(0) if build == "llama_untied" else tiny_model(tok, seed=0)
    peft_model = adapted(plain).eval()
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(3))
    state = merged_state_dict(peft_model)
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k].cpu(), reference[k].cpu()) for k in state)  # peft's merge, bit for bit

    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    save_pretrained_atomic(peft_model, None, tmp_path / "merged")
    assert not peft_keys(tmp_path / "merged")
    merged, info = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(peft_model(input_ids=ids).logits, expected)  # saving left the adapters unmerged


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(("L", "C", "s", "G"), [(13, 3, 2, 4), (16, 4, 4, 4)])
def test_strided_greedy_on_a_peft_model_equals_per_prefix_greedy(arch, L, C, s, G):
    """The strided sampler finds the decoder and LM head inside the wrapper: greedy strided blocks equal
    greedy decoding of each prefix with the adapted model (as tests/test_strided.py checks for plain models)."""
    model = adapted(strided_model(arch, "sdpa", seed=3), seed=1).eval()
    layout = StridedLayout(L, C, s, G)
    x = random_chunk(2, L, seed=7)
    out = strided_generate(model, x, layout, num_samples=2, temperature=0.0)
    assert torch.equal(out[:, 0], out[:, 1])
    differs = False
    for k in range(layout.num_blocks):
        prefix = x[:, : C + k * s]
        with torch.no_grad():
            ref = model.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), do_sample=False,
                                 max_new_tokens=G)[:, prefix.shape[1]:]
            with model.disable_adapter():
                plain = model.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), do_sample=False,
                                       max_new_tokens=G)[:, prefix.shape[1]:]
        assert torch.equal(out[:, 0, k], ref), f"block {k}"
        differs |= not torch.equal(ref, plain)
    assert differs  # the adapters change the decoding, so the sampler did run them


# ------------------------------------------------------------------------------------------- training
def _sft_data(tok) -> Packed:
    return pack_records([{"question": "", "answer": t} for t in TEXTS], tok, 32, "unstructured")


def test_lora_resume_matches_uninterrupted_run(tmp_path):
    """The resume state holds the wrapped model (base and adapters): a LoRA run stopped after step 5 and
    resumed ends with the parameters of an uninterrupted one."""
    tok = tiny_tokenizer(tmp_path)
    data = _sft_data(tok)
    cfg = TrainConfig.from_dict(dict(lr=3e-3, warmup_steps=2, max_steps=8, batch_size=4, micro_batch_size=2,
                                     resume_every=3, log_every=1, seed=3, lora={"r": 4, "dropout": 0.1}))

    def run(out, **kw):
        model = wrap(tiny_model(tok, seed=1), cfg.lora)
        result = Trainer(cfg, tmp_path / out, show_progress=False).fit(model, tok, data, SFTObjective(), **kw)
        return model, result

    full, _ = run("full")
    assert run("resumed", stop_after_step=5)[1] == {"stopped_at": 5}
    resumed, result = run("resumed")
    assert result["steps"] == 8
    for (n, p), (m, q) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert n == m
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    lines = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    assert {"event": "resume", "step": 5} in [json.loads(x) for x in lines]


def test_train_with_lora_writes_merged_models_and_the_adapter(tmp_path):
    from peft import PeftModel

    tok = tiny_tokenizer(tmp_path)
    init = tmp_path / "init"
    tiny_model(tok).save_pretrained(init)
    tok.save_pretrained(init)
    data = tmp_path / "data"
    prepare_task("t", {"source": "synthetic_code_qa", "sizes": {"train": 8, "valid": 2, "test": 2}}, data)
    spec = {"lr": 1e-2, "max_steps": 2, "batch_size": 2, "micro_batch_size": 2, "log_every": 1,
            "warmup_steps": 0, "checkpoint_steps": [1], "lora": {"r": 4, "alpha": 8}}
    job = TrainJob(task="t", task_spec={"kind": "code_qa", "seq_len": 128}, init=str(init), seed=0,
                  variant="lora")
    run = tmp_path / "run"
    assert train("sft", job, spec, data, run)["steps"] == 2

    assert {p.name for p in (run / ADAPTER_DIR).iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    ids = torch.randint(0, len(tok), (2, 10), generator=torch.Generator().manual_seed(0))
    for saved in (run / "model", run / "checkpoints" / "step1"):
        assert not peft_keys(saved), saved
        model, info = AutoModelForCausalLM.from_pretrained(saved, output_loading_info=True)
        assert not any(info.values()), (saved, info)
    final = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    base_plus_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(init), run / ADAPTER_DIR).eval()
    initial = AutoModelForCausalLM.from_pretrained(init).eval()
    with torch.no_grad():
        torch.testing.assert_close(final(input_ids=ids).logits, base_plus_adapter(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
        assert not torch.allclose(final(input_ids=ids).logits, initial(input_ids=ids).logits)  # it trained
