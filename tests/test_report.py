"""Report artefacts: tables and figures from synthetic evaluation results, and report.html in Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ebft.evaluation.results import make_result, write_result
from ebft.report.aggregate import aggregate
from ebft.report.frames import METHOD_COLOURS, load_results, report_meta
from ebft.report.tables import task_table
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = os.environ.get("EBFT_SYSTEM_TESTS") == "1"

TASK_GROUPS = {
    "code_qa": {"ce": ["eval/ce", "eval/ce_answer"], "cfm": ["eval/cfm"],
                "unit_tests": ["eval/unit_tests_greedy", "eval/unit_tests_pass@1"],
                "humaneval": ["eval/humaneval_greedy", "eval/humaneval_pass@1"]},
    "code_unstructured": {"ce": ["eval/ce"], "cfm": ["eval/cfm"], "humaneval": ["eval/humaneval_greedy"]},
    "translation": {"ce": ["eval/ce", "eval/ce_answer"], "cfm": ["eval/cfm"],
                    "translation": ["eval/bleu", "eval/chrf", "eval/comet", "eval/bleu/en-xx", "eval/chrf/xx-en",
                                    "eval/ood/chrf", "eval/bleu/en-de"]},
}
#: (method, variant, init) of the synthetic grid; the last EBFT variant is an ablation point.
RUNS = [("sft", "default", "base"), ("rlvr", "default", "base"), ("ebft", "default", "base"),
        ("ebft", "sft", "sft"), ("ebft", "base_wh0_ce0.1_div0.5", "base")]
SEEDS = (0, 1)


def synthetic_config() -> dict:
    """A config-shaped dict (only what report_meta reads) for the synthetic grid."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["methods"]["ebft"]["variants"]["base_wh0_ce0.1_div0.5"] = {"whitening": False, "ce_coef": 0.1,
                                                                  "diversity_coef": 0.5}
    cfg["methods"]["rlvr"]["defaults"]["init"] = "base"  # the grid's RLVR starts from the base model
    cfg["seeds"] = list(SEEDS)
    return cfg


def value(task: str, method: str, variant: str, seed: int, step: int | None, metric: str) -> float:
    """Deterministic fake values: lower CE and higher accuracy with training, EBFT best."""
    progress = 1.0 if step is None else step / 6
    gain = {"base": 0.0, "sft": 0.2, "rlvr": 0.3, "ebft": 0.5}[method] * progress + 0.01 * seed
    if "ce" in metric.split("/")[-1] or "cfm" in metric:
        return round(2.0 - gain, 4)
    return round(0.1 + gain / 2 + 0.05 * len(variant) / 20, 4)


def build_results(root: Path) -> list[Path]:
    """base/sft/rlvr/ebft x 3 tasks x 2 seeds, final models and a step-3 checkpoint."""
    paths = []

    def add(task, method, variant, seed, step, group, metrics, train_step):
        ckpt = "final" if step is None else f"step{step}"
        res = make_result(group, {"task": task, "method": method, "variant": variant, "seed": seed, "step": step},
                          {m: value(task, method, variant, seed, step, m) for m in metrics},
                          model=f"results/runs/{task}/{method}/{variant}/seed{seed}/model")
        res["train_step"] = train_step
        path = root / task / method / variant / f"seed{seed}" / ckpt / f"{group}.json"
        write_result(path, res)
        paths.append(path)

    for task, groups in TASK_GROUPS.items():
        for group, metrics in groups.items():
            for seed in SEEDS:
                add(task, "base", "tiny", seed, None, group, metrics, None)
            if group in ("cfm",):
                for seed in SEEDS:
                    add(task, "base", "tiny", seed, None, "cfm_by_length", ["eval/cfm_len8", "eval/cfm_len16"], None)
            for method, variant, _ in RUNS:
                if method == "rlvr" and task == "code_unstructured":
                    continue
                for seed in SEEDS:
                    add(task, method, variant, seed, None, group, metrics, 6)
                    if group in ("ce", "cfm", "unit_tests"):
                        add(task, method, variant, seed, 3, group, metrics, 3)
                    if group == "cfm":
                        add(task, method, variant, seed, None, "cfm_by_length",
                            ["eval/cfm_len8", "eval/cfm_len16"], 6)
    return paths


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    paths = build_results(root / "eval")
    start = time.time()
    aggregate(paths, root / "tables", root / "figures", report_meta(synthetic_config()))
    print(f"aggregate: {time.time() - start:.1f} s for {len(paths)} results")
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_task_tables_have_named_rows_and_metrics(aggregated):
    rows = read_csv(aggregated / "tables" / "code_qa.csv")
    names = [r["row"] for r in rows]
    assert names[:3] == ["base", "SFT", "RLVR"]
    assert names.count("EBFT (from SFT)") == 1
    assert {"EBFT (from base): default", "EBFT (from base): base_wh0_ce0.1_div0.5"} <= set(names)
    assert rows[0]["method"] == "base"  # the first CSV column stays the method
    assert {"eval/ce", "eval/cfm", "eval/unit_tests_greedy", "eval/humaneval_greedy", "eval/ce (std)"} <= set(rows[0])
    sft = next(r for r in rows if r["row"] == "SFT")
    assert float(sft["seeds"]) == 2
    assert float(sft["eval/ce"]) == pytest.approx((2.0 - 0.2 + 2.0 - 0.21) / 2)
    assert float(sft["eval/ce (std)"]) > 0
    unstructured = [r["row"] for r in read_csv(aggregated / "tables" / "code_unstructured.csv")]
    assert "RLVR" not in unstructured and "EBFT (from SFT)" in unstructured
    assert "No RLVR row" in (aggregated / "tables" / "code_unstructured.html").read_text()
    assert "No RLVR row" not in (aggregated / "tables" / "code_qa.html").read_text()
    tr = read_csv(aggregated / "tables" / "translation.csv")[0]
    assert {"eval/bleu/en-xx", "eval/chrf/xx-en", "eval/ood/chrf"} <= set(tr)
    assert "eval/bleu/en-de" not in tr  # per-direction values stay in summary.csv
    html = (aggregated / "tables" / "code_qa.html").read_text()
    assert "EBFT (from SFT)" in html and " ± " in html and "(paper)" not in html


def test_ablation_tables_list_ebft_variants_with_their_parameters(aggregated):
    rows = read_csv(aggregated / "tables" / "code_qa_ablation.csv")
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"default", "sft", "base_wh0_ce0.1_div0.5"}
    point = by_variant["base_wh0_ce0.1_div0.5"]
    assert (point["whitening"], point["ce_coef"], point["diversity_coef"], point["init"]) == ("False", "0.1", "0.5",
                                                                                             "base")
    assert point["pooling"] == "last_token"
    assert by_variant["sft"]["init"] == "sft" and "eval/cfm" in point
    assert read_csv(aggregated / "tables" / "translation_ablation.csv")[0]["pooling"] == "mean_pooling"
    assert "whitening" in (aggregated / "tables" / "code_qa_ablation.html").read_text()


def test_figures_exist_per_task_with_method_colours(aggregated):
    figures = aggregated / "figures"
    for name in ("validation_ce", "cfm_by_length", "training_curves", "accuracy_vs_ce", "ablation"):
        assert (figures / f"{name}.svg").stat().st_size > 1000
    for task in TASK_GROUPS:
        for name in ("accuracy_vs_ce", "cfm_by_length", "training_curves", "ablation"):
            svg = (figures / task / f"{name}.svg").read_text()
            assert svg.startswith("<?xml") and "<svg" in svg
        runs = sorted(p.name for p in (figures / task / "runs").glob("*.svg"))
        assert "ebft_sft_seed1.svg" in runs and "sft_default_seed0.svg" in runs
    svg = (figures / "code_qa" / "accuracy_vs_ce.svg").read_text().lower()
    for method in ("base", "sft", "rlvr", "ebft"):
        assert METHOD_COLOURS[method] in svg, method
    assert "unit_tests_greedy" in svg  # the tiny default's accuracy axis


def test_paper_numbers_shown_only_for_the_paper_config(tmp_path):
    paths = build_results(tmp_path / "eval")
    paths = [p for p in paths if "/code_qa/" in str(p)]
    meta = report_meta(synthetic_config())
    meta["name"] = "paper"
    aggregate(paths, tmp_path / "tables", tmp_path / "figures", meta)
    html = (tmp_path / "tables" / "code_qa.html").read_text()
    assert "EBFT (from base) (paper)" in html and "0.548" in html and "0.207" in html and "arXiv 2603.12248" in html
    paper = read_csv(tmp_path / "tables" / "code_qa_paper.csv")
    assert {(r["row"], r["metric"], r["value"]) for r in paper} >= {("SFT (paper)", "eval/humaneval_greedy", "0.483")}
    assert "humaneval_greedy" in (tmp_path / "figures" / "code_qa" / "accuracy_vs_ce.svg").read_text()


def test_name_convention_without_meta(tmp_path):
    paths = build_results(tmp_path / "eval")
    frame = load_results(paths)
    table = task_table(frame, "code_qa")
    assert "EBFT (from SFT)" in set(table["row"])


# ------------------------------------------------------------------------------------ report.html
def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


#: Injected into a copy of report.html: drives the report's own React app (global ``app``, ``results``) to each
#: result the way a click does, waits for the rendered <img>/<iframe>, and writes what it saw into the DOM.
PROBE = """
<script>
(function () {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function probe() {
    const seen = {categories: [], results: {}};
    await sleep(500);
    seen.categories = Array.from(document.querySelectorAll("#app a, #app li, #app button"))
      .map((el) => el.innerText.trim()).filter((t) => t);
    const where = {};
    for (const [c, subs] of Object.entries(categories)) {
      for (const [sc, paths] of Object.entries(subs)) { for (const p of paths) { where[p] = [c, sc]; } }
    }
    for (const [path, entry] of Object.entries(results)) {
      const html = path.endsWith(".html");
      app.setView({content: html ? "html" : "img", contentPath: entry.data_uri, resultPath: path});
      await sleep(300);
      const [category, subcategory] = where[path] || [null, null];
      const rec = {category, subcategory, labels: entry.labels, caption: (entry.caption || "").length};
      if (html) {
        const frame = document.querySelector("#app iframe");
        rec.shown = !!frame && frame.getAttribute("src") === entry.data_uri;
        const b64 = entry.data_uri.split(",")[1];
        const doc = new DOMParser().parseFromString(
          new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))), "text/html");
        rec.rows = Array.from(doc.querySelectorAll("tbody tr")).map((tr) => tr.querySelector("th,td").innerText);
      } else {
        const img = Array.from(document.querySelectorAll("#app img")).find((i) => i.src === entry.data_uri);
        rec.shown = !!img && img.complete;
        rec.width = img ? img.naturalWidth : 0;
        if (img && entry.data_uri.startsWith("data:image/svg+xml")) {
          // the texts of the SVG the page shows (matplotlib writes each text as a comment next to its glyphs)
          const svg = new TextDecoder().decode(
            Uint8Array.from(atob(img.src.split(";base64,")[1]), (c) => c.charCodeAt(0)));
          rec.texts = Array.from(svg.matchAll(/<!-- (.*?) -->/g), (m) => m[1]);
        }
      }
      seen.results[path] = rec;
    }
    const pre = document.createElement("pre");
    pre.id = "ebft-probe";
    pre.textContent = JSON.stringify(seen);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", () => { probe(); });
})();
</script>
"""


def render_report(report: Path) -> dict:
    """Open ``report`` (plus PROBE) in headless Chromium with a fresh profile; what the probe saw."""
    import re

    profile = Path(tempfile.mkdtemp(prefix="ebft-chromium-"))
    probed = profile / "report.html"
    text = report.read_text()
    idx = text.rfind("</body>")
    probed.write_text(text[:idx] + PROBE + text[idx:])
    try:
        out = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile / 'user'}", "--virtual-time-budget=60000", "--dump-dom", probed.as_uri()],
            capture_output=True, text=True, timeout=HANG_GUARD_S)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.search(r'<pre id="ebft-probe">(.*?)</pre>', out.stdout, flags=re.S)
    assert found, "the report's scripts did not run to the end: " + out.stderr[-2000:]
    import html as html_lib

    return json.loads(html_lib.unescape(found.group(1)))


@pytest.mark.skipif(not SYSTEM, reason="system test: set EBFT_SYSTEM_TESTS=1 (needs Debian chromium; "
                    "bash scripts/install_system_test_deps.sh)")
@pytest.mark.slow
def test_report_html_renders_tables_and_figures_in_chromium(smoke_run):
    assert chromium(), "chromium is not installed: run scripts/install_system_test_deps.sh"
    workdir = smoke_run
    report = workdir / "results" / "report.html"
    rep = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
                          "--directory", str(workdir), "--configfile", str(workdir / "smoke.yaml"),
                          "--cores", "2", "--report", str(report)],
                         cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert rep.returncode == 0, rep.stderr[-3000:]
    seen = render_report(report)
    # the navigation shows the task's category and the overview
    assert "code_qa" in seen["categories"] and "Overview" in seen["categories"], seen["categories"]
    shown = seen["results"]
    expected = ["results/tables/code_qa.html", "results/tables/code_qa_ablation.html",
                *[f"results/figures/code_qa/{k}.svg" for k in ("accuracy_vs_ce", "cfm_by_length",
                                                               "training_curves", "ablation")],
                "results/figures/code_qa/runs/sft_default_seed0.svg",
                *[f"results/figures/{k}.svg" for k in ("validation_ce", "accuracy_vs_ce", "cfm_by_length",
                                                       "training_curves", "ablation")]]
    for path in expected:
        assert path in shown and shown[path]["shown"], (path, shown.get(path))
        if path.endswith(".svg"):
            assert shown[path]["width"] > 100, (path, shown[path])  # the SVG decoded and has a size
    assert shown["results/tables/code_qa.html"]["rows"] == ["base", "SFT"]
    assert shown["results/tables/code_qa.html"]["category"] == "code_qa"
    assert shown["results/figures/code_qa/runs/sft_default_seed0.svg"]["subcategory"] == "runs"
    assert all(rec["caption"] > 100 for rec in shown.values())  # every artefact has its caption
    assert shown["results/figures/code_qa/runs/sft_default_seed0.svg"]["labels"] == {
        "method": "sft", "variant": "default", "seed": "0"}
    # what the figures say, read from the SVGs the page shows: curves over the fraction of the run with the
    # step count in the legend, and a note in a panel whose values are all 0
    curves = shown["results/figures/code_qa/training_curves.svg"]["texts"]
    run_texts = shown["results/figures/code_qa/runs/sft_default_seed0.svg"]["texts"]
    for texts in (curves, run_texts):
        assert "fraction of the run (0: initial model)" in texts, texts
        assert "SFT (6 steps)" in texts, texts  # micro config: SFT max_steps 6
    humaneval = [json.loads(p.read_text())["metrics"]["eval/humaneval_greedy"]
                 for p in (workdir / "results" / "eval" / "code_qa").rglob("humaneval.json")]
    assert humaneval
    if all(v == 0 for v in humaneval):  # the tiny model solves no HumanEval problem
        assert "all values are 0 (no problem solved)" in curves, curves
    assert "answer tokens" in shown["results/figures/validation_ce.svg"]["texts"]  # the legend, outside the bars


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    from tests.smoke_run import local_run

    return local_run(tmp_path_factory)


@pytest.mark.slow
def test_forcerun_one_evaluation_rule_reruns_only_it_and_its_dependents(smoke_run):
    from tests.smoke_run import run

    out = run(smoke_run, "-n", "--cores", "2", "--forcerun", "eval_code_qa_ckpt")
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.split("Job stats:")[1].split("total")[0]
    counts = {line.split()[0]: int(line.split()[1]) for line in table.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    # the SFT run's step-3 checkpoint (every group evaluated over training: one job); then the report
    assert counts == {"eval_code_qa_ckpt": 1, "aggregate": 1, "all": 1}, out.stdout[-3000:]
    nothing = run(smoke_run, "-n", "--cores", "2")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
