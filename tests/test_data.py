"""Tests of ebft.data: record schema, JSON lines, the offline generators, the hub loader, prepare_task."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ebft.data import code_qa, code_unstructured, hub, prepare_task, read_jsonl, translation, write_jsonl
from ebft.data.records import SPLITS, RecordError, validate_record, validate_records
from tests.helpers import HANG_GUARD_S

SMALL = {"train": 60, "valid": 12, "test": 12}


def _program(rec: dict[str, Any], completion: str | None = None) -> str:
    """The HumanEval-style program the sandbox harness runs for a code_qa record."""
    body = rec["answer"] if completion is None else completion
    return rec["question"] + body + "\n\n" + rec["test"] + f"\n\ncheck({rec['entry_point']})\n"


def _dump(splits: dict[str, list[dict[str, Any]]], directory: Path) -> dict[str, bytes]:
    """Write the splits as JSON lines and return their bytes."""
    out = {}
    for split, rows in splits.items():
        path = directory / f"{split}.jsonl"
        write_jsonl(path, rows)
        out[split] = path.read_bytes()
    return out


# ----------------------------------------------------------------------------------------------
# Records and JSON lines.


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_reports_bad_json_with_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "bad.jsonl", ['{"id": "a", "question": "q", "answer": "a"}', '{"id": "b",']
    )
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        read_jsonl(path)


def test_read_jsonl_rejects_non_objects(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:1: expected a JSON object"):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("kind", "record", "key"),
    [
        ("qa", {"id": "x", "question": "q"}, "answer"),
        ("qa", {"id": "x", "question": "", "answer": "a"}, "question"),
        ("qa", {"id": 3, "question": "q", "answer": "a"}, "id"),
        (
            "code_qa",
            {"id": "x", "question": "q", "answer": "a", "entry_point": "f", "test": "assert 1"},
            "test",
        ),
        (
            "code_qa",
            {"id": "x", "question": "q", "answer": "a", "entry_point": "1f", "test": "def check("},
            "entry_point",
        ),
        (
            "translation",
            {
                "id": "x",
                "question": "q",
                "answer": "a",
                "src_lang": "English",
                "tgt_lang": "de",
                "source": "s",
                "reference": "r",
                "origin": "synthetic",
            },
            "src_lang",
        ),
        (
            "translation",
            {
                "id": "x",
                "question": "q",
                "answer": "a",
                "src_lang": "en",
                "tgt_lang": "de",
                "source": "s",
                "origin": "synthetic",
            },
            "reference",
        ),
    ],
)
def test_bad_rows_name_file_line_and_key(tmp_path: Path, kind: str, record: dict[str, Any], key: str) -> None:
    good = {
        "id": "ok",
        "question": "q",
        "answer": "a",
        "entry_point": "f",
        "test": "def check(candidate):\n",
        "src_lang": "en",
        "tgt_lang": "de",
        "source": "s",
        "reference": "r",
        "origin": "synthetic",
    }
    path = _write_lines(tmp_path / "rows.jsonl", [json.dumps(good), "", json.dumps(record)])
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:3: .*key '{key}'") as info:
        read_jsonl(path, validate_kind=kind)
    assert info.value.key == key


def test_unstructured_allows_empty_question_and_duplicate_ids_fail(tmp_path: Path) -> None:
    rec = {"id": "d", "question": "", "answer": "text"}
    validate_record(rec, "unstructured", where="x:1")
    path = _write_lines(tmp_path / "dup.jsonl", [json.dumps(rec), json.dumps(rec)])
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:2: .*key 'id'"):
        read_jsonl(path, validate_kind="unstructured")
    with pytest.raises(ValueError, match="unknown task kind 'chat'"):
        validate_record(rec, "chat", where="x:1")


def test_write_jsonl_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"id": str(i), "question": "q", "answer": "ä"} for i in range(3)]
    assert write_jsonl(path, rows) == 3
    assert read_jsonl(path, validate_kind="qa") == rows
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [{"id": "x", "answer": object()}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]


# ----------------------------------------------------------------------------------------------
# code_qa.


@pytest.fixture(scope="module")
def code_splits() -> dict[str, list[dict[str, Any]]]:
    return code_qa.generate({"train": 300, "valid": 30, "test": 30}, seed=0)


def test_code_qa_has_many_template_families(code_splits: dict[str, list[dict[str, Any]]]) -> None:
    assert len(code_qa.FAMILIES) >= 25
    assert len({rec["family"] for rec in code_splits["train"]}) >= 25
    assert {split: len(rows) for split, rows in code_splits.items()} == {
        "train": 300,
        "valid": 30,
        "test": 30,
    }


def test_code_qa_deterministic(tmp_path: Path) -> None:
    first = _dump(code_qa.generate(SMALL, seed=3), tmp_path / "a")
    again = _dump(code_qa.generate(SMALL, seed=3), tmp_path / "b")
    other = _dump(code_qa.generate(SMALL, seed=4), tmp_path / "c")
    assert first == again
    assert first != other


def test_code_qa_splits_disjoint_and_valid(code_splits: dict[str, list[dict[str, Any]]]) -> None:
    questions = {split: [rec["question"] for rec in rows] for split, rows in code_splits.items()}
    all_questions = [q for qs in questions.values() for q in qs]
    assert len(all_questions) == len(set(all_questions))
    for split, rows in code_splits.items():
        validate_records(rows, "code_qa", where=split)
        for rec in rows:
            assert rec["question"].startswith(f"def {rec['entry_point']}(")
            assert rec["question"].endswith('    """\n')
            assert rec["answer"].startswith("    ") and rec["answer"].endswith("\n")
            assert rec["test"].count("assert candidate(") >= 3


def test_code_qa_references_pass_and_wrong_answers_fail(code_splits: dict[str, list[dict[str, Any]]]) -> None:
    for rows in code_splits.values():
        for rec in rows:
            exec(_program(rec), {})  # trusted reference code, generated by us
            with pytest.raises(AssertionError):
                exec(_program(rec, "    return None\n"), {})


def test_code_qa_program_runs_in_a_subprocess(code_splits: dict[str, list[dict[str, Any]]]) -> None:
    rec = code_splits["test"][0]
    ok = subprocess.run([sys.executable, "-c", _program(rec)], capture_output=True, timeout=HANG_GUARD_S)
    assert ok.returncode == 0, ok.stderr.decode()
    bad = subprocess.run(
        [sys.executable, "-c", _program(rec, "    return 12345\n")], capture_output=True, timeout=HANG_GUARD_S
    )
    assert bad.returncode != 0 and b"AssertionError" in bad.stderr


def test_code_qa_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="sizes\\['train'\\]"):
        code_qa.generate({"train": -1}, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        code_qa.generate({"training": 3}, seed=0)


# ----------------------------------------------------------------------------------------------
# code_unstructured.


def test_chunk_text_respects_limit_and_lines() -> None:
    text = "a = 1\n" * 10 + "x" * 25 + "\n" + "b = 2\n"
    chunks = code_unstructured.chunk_text(text, 12)
    assert "".join(chunks) == text
    assert all(len(chunk) <= 12 for chunk in chunks)
    assert chunks[0] == "a = 1\na = 1\n"
    with pytest.raises(ValueError, match="max_chars"):
        code_unstructured.chunk_text(text, 0)


def test_code_unstructured_from_stdlib(tmp_path: Path) -> None:
    sizes = {"train": 40, "valid": 8, "test": 8}
    splits = code_unstructured.generate(sizes, seed=0, max_chars=600)
    assert _dump(splits, tmp_path / "a") == _dump(
        code_unstructured.generate(sizes, 0, max_chars=600), tmp_path / "b"
    )
    assert _dump(splits, tmp_path / "a") != _dump(
        code_unstructured.generate(sizes, 1, max_chars=600), tmp_path / "c"
    )
    paths = {split: {rec["path"] for rec in rows} for split, rows in splits.items()}
    assert not paths["train"] & paths["valid"] and not paths["train"] & paths["test"]
    assert not paths["valid"] & paths["test"]
    for split, rows in splits.items():
        assert len(rows) == sizes[split]
        validate_records(rows, "unstructured", where=split)
        for rec in rows:
            assert rec["question"] == "" and 0 < len(rec["answer"]) <= 600
            assert code_unstructured.split_of(rec["path"]) == split
            assert "test" not in Path(rec["path"]).parts and "site-packages" not in rec["path"]


def test_code_unstructured_skips_tests_and_reports_shortfall(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "test").mkdir()
    for i in range(30):
        (root / "pkg" / f"mod{i}.py").write_text(f"def f{i}():\n    return {i}\n" * 5, encoding="utf-8")
    (root / "test" / "test_mod.py").write_text("assert True\n", encoding="utf-8")
    (root / "pkg" / "test_x.py").write_text("assert True\n", encoding="utf-8")
    files = code_unstructured.list_source_files(root)
    assert files == sorted(f"pkg/mod{i}.py" for i in range(30))
    with pytest.raises(ValueError, match="split 'train' has only"):
        code_unstructured.generate({"train": 10_000}, seed=0, root=root)


# ----------------------------------------------------------------------------------------------
# translation.


@pytest.fixture(scope="module")
def translation_splits() -> dict[str, list[dict[str, Any]]]:
    return translation.generate({"train": 200, "valid": 40, "test": 40}, seed=0, pairs=["en-de", "en-fr"])


def test_translation_templates_and_prompt_format(translation_splits: dict[str, list[dict[str, Any]]]) -> None:
    assert len(translation.TEMPLATES) >= 20
    for rows in translation_splits.values():
        validate_records(rows, "translation", where="translation")
        for rec in rows:
            src, tgt = translation.LANG_NAMES[rec["src_lang"]], translation.LANG_NAMES[rec["tgt_lang"]]
            assert rec["question"] == f"Translate from {src} to {tgt}.\n{src}: {rec['source']}\n{tgt}:"
            assert rec["answer"] == f" {rec['reference']}\n"
            assert translation.parse_answer(rec["answer"]) == rec["reference"]
            if rec["origin"] == "synthetic":
                assert "{" not in rec["source"] + rec["reference"]
                assert rec["source"][0].isupper() and rec["source"][-1] in ".?"


def test_translation_directions_origins_and_sizes(
    translation_splits: dict[str, list[dict[str, Any]]],
) -> None:
    directions = {(r["src_lang"], r["tgt_lang"]) for r in translation_splits["train"]}
    assert directions == {("en", "de"), ("de", "en"), ("en", "fr"), ("fr", "en")}
    for split in ("train", "valid"):
        assert len(translation_splits[split]) == {"train": 200, "valid": 40}[split]
        assert {r["origin"] for r in translation_splits[split]} == {"synthetic"}
    test = translation_splits["test"]
    assert sum(r["origin"] == "synthetic" for r in test) == 40
    real = [r for r in test if r["origin"] == "django"]
    assert {(r["src_lang"], r["tgt_lang"]) for r in real} == directions
    assert len(real) >= 200
    assert all(len(r["source"].split()) >= 4 and "%" not in r["source"] for r in real)


def test_translation_splits_disjoint_by_source(translation_splits: dict[str, list[dict[str, Any]]]) -> None:
    sources = {split: {r["source"] for r in rows} for split, rows in translation_splits.items()}
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]
    sentences = {
        split: {r["source"] for r in rows} | {r["reference"] for r in rows}
        for split, rows in translation_splits.items()
    }
    assert not sentences["train"] & sentences["test"]


def test_translation_deterministic(tmp_path: Path) -> None:
    sizes = {"train": 40, "valid": 8, "test": 8}
    first = _dump(translation.generate(sizes, seed=1, real_test=False), tmp_path / "a")
    assert first == _dump(translation.generate(sizes, seed=1, real_test=False), tmp_path / "b")
    assert first != _dump(translation.generate(sizes, seed=2, real_test=False), tmp_path / "c")
    with pytest.raises(ValueError, match="bad translation pair"):
        translation.generate(sizes, seed=1, pairs=["en-xx"])


def test_translation_sentences_use_num2words() -> None:
    from num2words import num2words

    template = translation.Template("I have {n} {noun}.", "Ich habe {n} {noun}.", "J'ai {n} {noun}.")
    for seed in range(20):
        en, de, fr = translation.instantiate(template, random.Random(seed))
        noun = next(n for n in translation.NOUNS if en.endswith(f" {n[0]}."))
        number_en = en.removeprefix("I have ").removesuffix(f" {noun[0]}.")
        value = next(k for k in range(2, 1000) if num2words(k, lang="en") == number_en)
        assert de == f"Ich habe {num2words(value, lang='de')} {noun[1]}."
        assert fr == f"J'ai {num2words(value, lang='fr')} {noun[2]}."


def test_parse_po_handles_multiline_fuzzy_plural_and_context() -> None:
    text = "\n".join(
        [
            'msgid ""',
            'msgstr ""',
            '"Language: de\\n"',
            "",
            "#: a.py:1",
            'msgid ""',
            '"Please enter a "',
            '"valid address."',
            'msgstr "Bitte eine gültige Adresse."',
            "",
            "#, fuzzy",
            'msgid "Old text here now"',
            'msgstr "Alt"',
            "",
            'msgid "one item"',
            'msgid_plural "many items"',
            'msgstr[0] "ein"',
            'msgstr[1] "viele"',
            "",
            'msgctxt "month"',
            'msgid "May"',
            'msgstr "Mai"',
            '#~ msgid "gone"',
            '#~ msgstr "weg"',
        ]
    )
    entries = translation.parse_po(text)
    assert [(e.msgid, e.msgstr, e.fuzzy, e.plural, e.context) for e in entries] == [
        ("Please enter a valid address.", "Bitte eine gültige Adresse.", False, False, None),
        ("Old text here now", "Alt", True, False, None),
        ("one item", "ein", False, True, None),
        ("May", "Mai", False, False, "month"),
    ]
    assert translation.is_sentence_like("Please enter a valid address.")
    assert not translation.is_sentence_like("Enter %(count)s items please.")


# ----------------------------------------------------------------------------------------------
# Hub loader (local directories only; the tests run offline).


def _opencode_rows() -> list[dict[str, Any]]:
    return [
        {
            "question": f"Write a function add{i} that adds {i} to x.",
            "answer": f"def add{i}(x):\n    return x + {i}\n",
            "unit_tests": str([f"assert add{i}(1) == {1 + i}", f"assert add{i}(-1) == {i - 1}"]),
        }
        for i in range(8)
    ]


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pd = pytest.importorskip("pandas")
    root = tmp_path_factory.mktemp("hub") / "opencode"
    (root / "data").mkdir(parents=True)
    rows = _opencode_rows()
    pd.DataFrame(rows).to_parquet(root / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(rows[:3]).to_parquet(root / "data" / "test-00000-of-00001.parquet")
    return root


CODE_COLUMNS = {"question": "question", "answer": "answer", "test": "unit_tests"}


def test_hub_loader_maps_columns_from_parquet_dir(parquet_dir: Path) -> None:
    rows = hub.load_split(
        parquet_dir, "train", columns=CODE_COLUMNS, max_rows=3, skip_rows=2, task_kind="code_qa"
    )
    assert [r["id"] for r in rows] == ["train-000002", "train-000003", "train-000004"]
    first = rows[0]
    assert first["question"].startswith("Write a function add2")
    assert first["entry_point"] == "add2"
    assert first["test"] == "def check(candidate):\n    assert add2(1) == 3\n    assert add2(-1) == 1\n"
    exec(first["answer"] + "\n\n" + first["test"] + f"\n\ncheck({first['entry_point']})\n", {})
    assert len(hub.load_split(parquet_dir, "test", columns=CODE_COLUMNS, task_kind="code_qa")) == 3


def test_hub_loader_reports_missing_columns(parquet_dir: Path) -> None:
    with pytest.raises(ValueError, match="columns\\['question'\\] names column 'prompt'"):
        hub.load_split(parquet_dir, "train", columns={"question": "prompt", "answer": "answer"})


def test_hub_loader_reads_save_to_disk_and_jsonl(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    pairs = [
        {"lp": "en-de", "src": f"Hello number {i}.", "ref": f"Hallo Nummer {i}.", "uid": i} for i in range(4)
    ]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(pairs)}).save_to_disk(str(tmp_path / "wmt"))
    columns = {"id": "uid", "lang_pair": "lp", "source": "src", "reference": "ref"}
    rows = hub.load_split(
        tmp_path / "wmt", "test", columns=columns, task_kind="translation", defaults={"origin": "wmt22"}
    )
    assert rows[1]["id"] == "1" and rows[1]["origin"] == "wmt22"
    assert rows[1]["question"] == translation.format_prompt("en", "de", "Hello number 1.")
    assert rows[1]["answer"] == " Hallo Nummer 1.\n"
    write_jsonl(tmp_path / "docs.jsonl", [{"text": "print(1)\n"}, {"text": "x = 2\n"}])
    docs = hub.load_split(
        tmp_path / "docs.jsonl", "train", columns={"answer": "text"}, task_kind="unstructured"
    )
    assert docs == [
        {"answer": "print(1)\n", "id": "train-000000", "question": ""},
        {"answer": "x = 2\n", "id": "train-000001", "question": ""},
    ]


def test_normalize_unit_tests_forms() -> None:
    check = "def check(candidate):\n    assert candidate(1) == 2\n"
    assert hub.normalize_unit_tests(check) == check
    assert hub.normalize_unit_tests(["assert f(1)"]) == "def check(candidate):\n    assert f(1)\n"
    assert hub.normalize_unit_tests('["assert f(1)", "assert f(2)"]').count("assert") == 2
    assert hub.normalize_unit_tests("assert f(1)\nassert f(2)\n").count("\n    assert") == 2
    with pytest.raises(ValueError, match="empty"):
        hub.normalize_unit_tests([])


# ----------------------------------------------------------------------------------------------
# prepare_task.


GENERATOR_CONFIGS = {
    "code_qa": {"source": "synthetic_code_qa", "seed": 0, "sizes": {"train": 30, "valid": 5, "test": 5}},
    "code_unstructured": {
        "source": "stdlib_code",
        "seed": 0,
        "sizes": {"train": 20, "valid": 4, "test": 4},
        "max_chars": 800,
    },
    "translation": {
        "source": "synthetic_translation",
        "seed": 0,
        "sizes": {"train": 20, "valid": 4, "test": 4},
        "pairs": ["en-de"],
        "real_test": True,
        "real_test_max": 10,
    },
}
KINDS = {"code_qa": "code_qa", "code_unstructured": "unstructured", "translation": "translation"}


@pytest.mark.parametrize("task", sorted(GENERATOR_CONFIGS))
def test_prepare_task_writes_splits_and_manifest(tmp_path: Path, task: str) -> None:
    cfg = GENERATOR_CONFIGS[task]
    manifest = prepare_task(task, cfg, tmp_path / task)
    assert sorted(p.name for p in (tmp_path / task).iterdir()) == [
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "valid.jsonl",
    ]
    assert json.loads((tmp_path / task / "manifest.json").read_text()) == manifest
    assert manifest["source"] == cfg["source"] and manifest["seed"] == 0 and manifest["kind"] == KINDS[task]
    for split in SPLITS:
        path = tmp_path / task / f"{split}.jsonl"
        rows = read_jsonl(path, validate_kind=KINDS[task])
        assert manifest["counts"][split] == len(rows) == manifest["files"][split]["rows"]
        assert manifest["files"][split]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    if task == "translation":
        assert manifest["counts"]["test"] == 4 + 2 * 10
    else:
        assert manifest["counts"] == cfg["sizes"]
    again = prepare_task(task, cfg, tmp_path / "again")
    assert again["files"] == manifest["files"]


def test_prepare_task_from_hub(tmp_path: Path, parquet_dir: Path) -> None:
    cfg = {
        "source": "hub",
        "kind": "code_qa",
        "columns": CODE_COLUMNS,
        "splits": {
            "train": {"path": str(parquet_dir), "split": "train", "max_rows": 5},
            "valid": {"path": str(parquet_dir), "split": "train", "skip_rows": 5},
            "test": {"path": str(parquet_dir), "split": "test"},
        },
    }
    manifest = prepare_task("hub_code", cfg, tmp_path / "out")
    assert manifest["counts"] == {"train": 5, "valid": 3, "test": 3}
    valid = read_jsonl(tmp_path / "out" / "valid.jsonl", validate_kind="code_qa")
    assert [r["id"] for r in valid] == ["valid-000005", "valid-000006", "valid-000007"]


def test_prepare_task_rejects_bad_configs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'source' is 'ftp'; allowed values: synthetic_code_qa, stdlib_code"):
        prepare_task("t", {"source": "ftp"}, tmp_path)
    with pytest.raises(ValueError, match="lacks the key 'sizes'"):
        prepare_task("t", {"source": "synthetic_code_qa", "seed": 0}, tmp_path)
    with pytest.raises(ValueError, match="lacks the key 'kind'"):
        prepare_task("t", {"source": "hub", "splits": {}, "columns": {}}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_prepare_hub_translation_with_ood_test_set(tmp_path: Path) -> None:
    rows = [{"uid": f"u{i}", "lp": "en-de", "src": f"Hello number {i}.", "ref": f"Hallo Nummer {i}."} for i in range(4)]
    write_jsonl(tmp_path / "wmt.jsonl", rows)
    ood = [{"uid": f"o{i}", "lp": "fr-en", "src": f"Salut {i} !", "ref": f"Hi {i}!"} for i in range(2)]
    write_jsonl(tmp_path / "mtnt.jsonl", ood)
    columns = {"id": "uid", "lang_pair": "lp", "source": "src", "reference": "ref"}
    path = str(tmp_path / "wmt.jsonl")
    splits = {"train": {"path": path, "split": "train", "max_rows": 2},
              "valid": {"path": path, "split": "train", "skip_rows": 2, "max_rows": 1},
              "test": {"path": path, "split": "train", "skip_rows": 3}}
    cfg = {"source": "hub", "kind": "translation", "columns": columns, "splits": splits,
           "ood_test": {"path": str(tmp_path / "mtnt.jsonl"), "split": "train", "origin": "mtnt"}}
    prepare_task("translation", cfg, tmp_path / "out")
    test = read_jsonl(tmp_path / "out" / "test.jsonl", validate_kind="translation")
    assert [r["origin"] for r in test].count("mtnt") == 2 and len(test) == 3
    assert {r["src_lang"] for r in test if r["origin"] == "mtnt"} == {"fr"}
