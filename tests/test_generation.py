"""Evaluation generation: stopping a row once its graded part is complete changes no graded text, and
length-sorted batches return completions in the caller's order."""

from __future__ import annotations

import pytest

from ebft.generation import generate, generate_batched, graded_part_complete, truncate_completion
from tests.helpers import tiny_model, tiny_tokenizer

PROMPTS = ["def f(x):\n", "import os\nimport sys\n\n\ndef main(argv):\n    ", "class A:\n    def g(self, y):\n",
           "English: the cat\nGerman:", "x = 1\n", "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n"]


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory):
    tok = tiny_tokenizer(tmp_path_factory.mktemp("gen"))
    return tok, tiny_model(tok)


@pytest.mark.parametrize(("text", "kind", "complete"), [
    ("    return x\n", "code_qa", False),
    ("    return x\n\n", "code_qa", False),
    ("    return x\ndef", "code_qa", True),
    ("    y = 1\n    return y\nprint(3)", "humaneval", True),
    ("    return x\n\ufffd", "code_qa", False),  # the next byte may make a whitespace character
    ("\n\n", "translation", False),
    ("\n Hallo", "translation", False),
    ("\n Hallo Welt\n", "translation", True),
    (" Hallo\nmore", "translation", True),
    ("anything\n", "unstructured", False),
    ("```python\ndef f(x):\n    return x\n", "code_qa", False),  # a fenced block is open until it closes
    ("\n```python\ndef f(x):\n    return x\n```", "humaneval", True),
    ("```", "code_qa", False),
])
def test_graded_part_complete(text, kind, complete):
    assert graded_part_complete(text, kind) is complete
    if complete:  # appending anything leaves the graded part as it is
        assert truncate_completion(text + "\nz = 1\n  more", kind) == truncate_completion(text, kind)


def test_a_fenced_answer_is_graded_as_its_block():
    """An instruction-tuned model's fenced answer: the block's content, which redefines the function when
    appended to the prompt; a body without a fence keeps the HumanEval convention."""
    text = "```python\ndef f(x):\n    return x + 1\n```\n\nThis function adds one."
    assert truncate_completion(text, "code_qa") == "def f(x):\n    return x + 1\n"
    namespace: dict = {}
    exec("def f(x):\n    \"\"\"Add one.\"\"\"\n" + truncate_completion(text, "code_qa"), namespace)  # noqa: S102
    assert namespace["f"](1) == 2
    assert truncate_completion("    return x\n```\n", "code_qa") == "    return x\n"


@pytest.mark.parametrize("kind", ["code_qa", "translation"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stopping_when_graded_changes_no_graded_text(tok_model, kind, temperature):
    tok, model = tok_model
    kw = dict(kind=kind, num_samples=3, temperature=temperature, max_new_tokens=48, seed=5)
    full = generate(model, tok, PROMPTS, **kw)
    stopped = generate(model, tok, PROMPTS, stop_when_graded=True, **kw)
    assert stopped.texts == full.texts
    assert stopped.completion_ids.shape[1] <= full.completion_ids.shape[1]
    # a stopped row is the start of the full row: the same tokens, drawn from the same random stream
    for raw, short in zip(full.raw_texts, stopped.raw_texts, strict=True):
        assert raw.startswith(short)


def test_stopping_when_graded_saves_decode_steps(tok_model):
    tok, model = tok_model
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    # a random tiny model rarely writes a line break: raise its logit so that rows finish early
    hook = model.lm_head.register_forward_hook(lambda module, args, out: out.index_add(
        -1, out.new_tensor([newline], dtype=int), out.new_full((*out.shape[:-1], 1), 4.0)))
    try:
        kw = dict(kind="translation", num_samples=2, temperature=1.0, max_new_tokens=64, seed=0)
        full = generate(model, tok, PROMPTS, **kw)
        stopped = generate(model, tok, PROMPTS, stop_when_graded=True, **kw)
    finally:
        hook.remove()
    assert stopped.texts == full.texts
    assert all(graded_part_complete(t, "translation") for t in stopped.raw_texts)
    assert stopped.completion_ids.shape[1] < full.completion_ids.shape[1] == 64


def test_length_sorted_batches_keep_the_callers_order(tok_model):
    tok, model = tok_model
    kw = dict(kind="code_qa", num_samples=2, temperature=0.8, max_new_tokens=12, batch_size=2, seed=3)
    forward = generate_batched(model, tok, PROMPTS, **kw)
    backward = generate_batched(model, tok, PROMPTS[::-1], **kw)
    assert len(forward) == len(PROMPTS) and all(len(c) == 2 for c in forward)
    assert forward == backward[::-1]  # the batches depend on the lengths only, not on the input order
    # the shortest two prompts form the first batch, seeded with `seed`
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    first = sorted(range(len(PROMPTS)), key=lengths.__getitem__)[:2]
    alone = generate(model, tok, [PROMPTS[k] for k in first], kind="code_qa", num_samples=2, temperature=0.8,
                     max_new_tokens=12, seed=3, stop_when_graded=True)
    assert [forward[k] for k in first] == [alone.texts[:2], alone.texts[2:]]


def test_chat_prompts_wrap_code_in_the_template_and_need_one(tmp_path):
    from ebft.generation import CODE_INSTRUCTION, chat_prompts

    tok = tiny_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="chat_template: true, but the tokenizer has no chat template"):
        chat_prompts(tok, ["def f(x):\n"], "code_qa")
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    code, text = chat_prompts(tok, ["def f(x):\n"], "humaneval")[0], chat_prompts(tok, ["English: cat\nGerman:"],
                                                                                  "translation")[0]
    assert code == f"<u>{CODE_INSTRUCTION}```python\ndef f(x):\n```</u><a>"
    assert text == "<u>English: cat\nGerman:</u><a>"
