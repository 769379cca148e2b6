"""The benchmarks of issue 7 run end to end on a toy geometry (seconds), so they cannot rot. Not a timing test:
it checks the JSON layout, that the three samplers agree token for token, and that chunked scoring stays
below the full-logit memory."""

from __future__ import annotations

import json

from benchmarks.run import main


def test_quick_benchmarks_on_tiny_geometry(tmp_path):
    out = tmp_path / "perf.json"
    report = main(["--preset", "tiny", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) >= {"machine", "targets", "sampler", "step", "scoring", "sandbox"}
    assert {"cpus", "torch_threads", "loadavg_start", "loadavg_end"} <= set(report["machine"])

    sampler = report["sampler"]
    assert set(sampler["median_s"]) == {"ours", "recompute", "generate", "floor", "floor_no_lm_head"}
    assert sampler["greedy_identical"] == {"recompute": True, "generate": True}
    assert set(sampler["ratios"]) == {"sampler_vs_recompute_speedup", "sampler_vs_generate_speedup",
                                      "sampler_vs_floor_ratio"}
    for ratio in sampler["ratios"].values():
        assert {"value", "target", "met"} == set(ratio) and ratio["value"] > 0

    step = report["step"]
    assert set(step["median_s"]) == {"sft", "ebft_shared", "ebft_unshared"}
    assert set(step["breakdown_s"]) == {"sampling", "features", "reward_maths", "policy_fwd_bwd"}
    assert set(step["peak_rss_increase_mb"]) == {"sft", "ebft_shared", "ebft_unshared"}
    assert step["ratios"]["ebft_vs_sft_ratio"]["value"] > 0

    scoring = report["scoring"]
    assert "full_logits" in scoring["peak_rss_increase_mb"] and scoring["full_fp32_logits_mb"] > 0
    assert any(k.startswith("chunked_") for k in scoring["peak_rss_increase_mb"])

    sandbox = report["sandbox"]
    assert sandbox["programs"] == 4 and sandbox["pass@1"] == 1.0 and sandbox["programs_per_s"] > 0
