"""The local ``evaluate`` metric modules (ebft/evaluate_metrics) load offline and agree with the pipeline.

Expected values are computed independently (hand-worked pass@k, a direct numpy CFM, sacrebleu called
directly) as well as with the pipeline's functions, since the modules call the latter.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch

from ebft.evaluate_metrics import METRIC_NAMES, load, metric_path
from ebft.evaluation.code import pass_at_k as pipeline_pass_at_k
from ebft.evaluation.translation import corpus_scores
from ebft.rewards import cfm_loss


@pytest.fixture(scope="module")
def metrics():
    return {name: load(name) for name in METRIC_NAMES}


# ------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------


def test_metric_paths_and_offline_cache():
    for name in METRIC_NAMES:
        path = Path(metric_path(name))
        assert (path / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="unknown ebft evaluate metric"):
        metric_path("sacrebleu")
    # conftest: offline, with a private HF_HOME, so a cached hub module cannot make the tests pass by accident.
    assert os.environ["HF_EVALUATE_OFFLINE"] == "1"
    assert Path(evaluate.config.HF_MODULES_CACHE).resolve().is_relative_to(Path(os.environ["HF_HOME"]).resolve())


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_evaluate_load_local_path(name):
    metric = evaluate.load(metric_path(name))
    assert isinstance(metric, evaluate.Metric)
    assert metric.name == name  # module name from the class name: PassAtK, CFM, Translation
    assert "predictions" in metric._feature_names()


# ------------------------------------------------------------------------------------------------------
# pass@k
# ------------------------------------------------------------------------------------------------------

# 4 problems, 5 samples each, with c = 0, 1, 2, 5 correct.
CORRECT = [[False] * 5, [False, True, False, False, False], [True, False, False, True, False], [True] * 5]


def _hand_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_hand_computed(metrics):
    out = metrics["pass_at_k"].compute(predictions=CORRECT, k=[1, 2, 5, 6])
    # pass@1 = mean c/n = (0 + .2 + .4 + 1) / 4; pass@2 = (0 + (1 - 6/10) + (1 - 3/10) + 1) / 4;
    # pass@5 = fraction of problems with a correct sample; k = 6 > n is left out.
    assert out["pass@1"] == pytest.approx(0.4, abs=1e-12)
    assert out["pass@2"] == pytest.approx(0.525, abs=1e-12)
    assert out["pass@5"] == pytest.approx(0.75, abs=1e-12)
    assert "pass@6" not in out
    assert out["num_problems"] == 4 and out["num_samples"] == 20
    n, c = np.array([5, 5, 5, 5]), np.array([0, 1, 2, 5])
    for k in (1, 2, 5):
        assert out[f"pass@{k}"] == pytest.approx(np.mean([_hand_pass_at_k(5, ci, k) for ci in c]), abs=1e-12)
        assert out[f"pass@{k}"] == pytest.approx(float(pipeline_pass_at_k(n, c, k).mean()), abs=1e-12)


def test_pass_at_k_counts_config_uneven_n_and_batches():
    n, c = [3, 7, 10], [1, 0, 4]
    counts = load("pass_at_k", "counts").compute(num_samples=n, num_correct=c, k=[1, 3, 4])
    assert "pass@4" not in counts  # min n = 3
    for k in (1, 3):
        expected = np.mean([_hand_pass_at_k(ni, ci, k) for ni, ci in zip(n, c, strict=True)])
        assert counts[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
        assert counts[f"pass@{k}"] == pytest.approx(float(pipeline_pass_at_k(np.array(n), np.array(c), k).mean()))
    # The same data as booleans, added in two batches.
    metric = load("pass_at_k")
    metric.add_batch(predictions=[[True, False, False], [False] * 7])
    metric.add_batch(predictions=[[True] * 4 + [False] * 6])
    booleans = metric.compute(k=[1, 3, 4])
    assert booleans == pytest.approx(counts)
    with pytest.raises(ValueError, match="outside"):
        load("pass_at_k", "counts").compute(num_samples=[2], num_correct=[3])


# ------------------------------------------------------------------------------------------------------
# CFM
# ------------------------------------------------------------------------------------------------------


def _numpy_cfm(phi: np.ndarray, psi: np.ndarray) -> float:
    n = phi.shape[0]
    gram = phi @ phi.T
    cross = (gram.sum() - np.trace(gram)) / (n * (n - 1))
    return float(cross - 2.0 * (phi @ psi).mean() + psi @ psi)


def _cfm_examples(seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = [(4, 8), (4, 8), (2, 8), (3, 5), (4, 8)]  # mixed n and D: equal shapes are batched together
    phis = [rng.normal(size=s) for s in shapes]
    psis = [rng.normal(size=s[1]) + phi.mean(axis=0) for s, phi in zip(shapes, phis, strict=True)]
    return phis, psis


def test_cfm_matches_numpy_and_pipeline(metrics):
    phis, psis = _cfm_examples()
    out = metrics["cfm"].compute(predictions=[p.tolist() for p in phis], references=[p.tolist() for p in psis],
                                 return_per_example=True)
    direct = np.array([_numpy_cfm(p, q) for p, q in zip(phis, psis, strict=True)])
    pipeline = np.array([float(cfm_loss(torch.from_numpy(p), torch.from_numpy(q))) for p, q in zip(phis, psis,
                                                                                                   strict=True)])
    np.testing.assert_allclose(out["cfm_per_example"], direct, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["cfm_per_example"], pipeline, rtol=1e-12, atol=1e-12)
    assert out["cfm"] == pytest.approx(direct.mean(), rel=1e-10)
    assert out["cfm_se"] == pytest.approx(direct.std(ddof=1) / math.sqrt(len(direct)), rel=1e-10)
    assert out["num_examples"] == len(phis)
    # Reward terms: a_i = 2 cos(phi_i, psi), d_i = 2/(n-1) sum_{j != i} <phi_i, phi_j>.
    align = [np.mean(2 * (p @ q) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q))) for p, q in zip(phis, psis,
                                                                                                     strict=True)]
    div = [np.mean(2 * ((p @ p.T).sum(axis=1) - (p * p).sum(axis=1)) / (len(p) - 1)) for p in phis]
    assert out["alignment"] == pytest.approx(np.mean(align), rel=1e-10)
    assert out["diversity"] == pytest.approx(np.mean(div), rel=1e-10)


def test_cfm_known_value_and_errors(metrics):
    # phi = e1, e2; psi = e1: cross 0, alignment term -2 * 1/2, <psi, psi> = 1.
    out = metrics["cfm"].compute(predictions=[[[1.0, 0.0], [0.0, 1.0]]], references=[[1.0, 0.0]])
    assert out["cfm"] == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(out["cfm_se"]) and "cfm_per_example" not in out
    with pytest.raises(ValueError, match="n >= 2"):
        metrics["cfm"].compute(predictions=[[[1.0, 0.0]]], references=[[1.0, 0.0]])
    with pytest.raises(ValueError, match="references must be"):
        metrics["cfm"].compute(predictions=[[[1.0, 0.0], [0.0, 1.0]]], references=[[1.0, 0.0, 0.0]])


# ------------------------------------------------------------------------------------------------------
# Translation
# ------------------------------------------------------------------------------------------------------

DE_HYPS = ["Die Katze sitzt auf der Matte.", "Das ist ein kleiner Test.", "Guten Morgen, wie geht es dir?"]
DE_REFS = ["Die Katze saß auf der Matte.", "Dies ist ein kleiner Test.", "Guten Morgen, wie geht es Ihnen?"]
ZH_HYPS = ["猫坐在垫子上。", "这是一个小测试。", "今天天气很好。"]
ZH_REFS = ["猫坐在垫子上了。", "这是一个简单的测试。", "今天的天气很好。"]


@pytest.mark.parametrize(("hyps", "refs", "tgt_lang", "tokenize"), [
    (DE_HYPS, DE_REFS, "de", "13a"),
    (DE_HYPS, DE_REFS, None, "13a"),
    (ZH_HYPS, ZH_REFS, "zh", "zh"),
])
def test_translation_matches_sacrebleu_and_pipeline(metrics, hyps, refs, tgt_lang, tokenize):
    import sacrebleu

    out = metrics["translation"].compute(predictions=hyps, references=refs, tgt_lang=tgt_lang)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score, rel=1e-12)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, rel=1e-12)
    assert out == pytest.approx(corpus_scores(hyps, refs, tgt_lang or "en"), rel=1e-12)
    assert 0.0 < out["bleu"] < 100.0 and 0.0 < out["chrf"] < 100.0


def test_translation_tgt_lang_picks_tokenizer_and_multi_reference(metrics):
    import sacrebleu

    zh = metrics["translation"].compute(predictions=ZH_HYPS, references=ZH_REFS, tgt_lang="zh-CN")
    plain = metrics["translation"].compute(predictions=ZH_HYPS, references=ZH_REFS)
    assert zh["bleu"] != pytest.approx(plain["bleu"])  # the option matters on unsegmented Chinese
    assert plain["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="13a").score)
    second = ["Die Katze sitzt auf dem Teppich.", "Das ist ein kleiner Versuch.", "Guten Morgen, wie geht's?"]
    out = metrics["translation"].compute(predictions=DE_HYPS, references=[list(r) for r in zip(DE_REFS, second,
                                                                                                strict=True)])
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(DE_HYPS, [DE_REFS, second], tokenize="13a").score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(DE_HYPS, [DE_REFS, second]).score)
