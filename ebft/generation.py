"""Plain (non-strided) generation of completions for prompts: RLVR rollouts and downstream evaluation.

Prompts are left-padded into one batch and completed with ``model.generate`` (KV cache), ``n`` samples per
prompt, greedy when ``temperature == 0``. Sampling is reproducible: the global RNG is forked and seeded
for the call, so the result depends only on ``seed`` (not on what ran before) and the caller's RNG
stream is untouched. Completions are cut at the first EOS and then at the task's stop sequences:

* code (HumanEval convention): a completion is a function body, so it ends at the first line that is not
  indented (``"\\ndef"``, ``"\\nclass"``, ``"\\nif"``, ``"\\nprint"``, ``"\\n#"``, or any other top-level line).
  A completion that opens a Markdown code fence instead (instruction-tuned models answer a bare function
  header with a fenced block that restates the whole function) is graded as the content of that block, up
  to its closing fence: appended to the prompt it redefines the function, which is valid Python;
* translation: the first line of the generation is the hypothesis (the answer format is ``" {ref}\\n"``).

With ``stop_when_graded`` (evaluation: :func:`generate_batched`) a row stops once its graded part is complete
(:func:`graded_part_complete`: a top-level line after code, a line break after non-blank translation text),
and the batch stops when every row has: the truncated completions are the same as without it, because the
tokens a row draws before it stops do not change (finished rows only stop consuming decode steps).
RLVR rollouts keep generating to EOS or ``max_new_tokens``, since their tokens are what the policy loss scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

CODE_KINDS = frozenset({"code_qa", "humaneval"})
_TOP_LEVEL_LINE = re.compile(r"\n(?=\S)")


def graded_part_complete(text: str, kind: str) -> bool:
    """Whether more tokens could change :func:`truncate_completion` of ``text`` (False) or not (True).

    Trailing U+FFFD characters (a multi-byte character whose bytes are not all generated yet, which may
    still turn out to be whitespace) are not counted."""
    text = text.rstrip("\ufffd")
    if kind in CODE_KINDS:
        fenced = _fenced_block(text)
        if fenced is not None:
            return fenced[1]
        return _TOP_LEVEL_LINE.search(text) is not None
    if kind == "translation":
        stripped = text.lstrip()
        return bool(stripped) and "\n" in stripped
    return False


class _StopWhenGraded(StoppingCriteria):
    """Per-row stop: the decoded completion so far (after ``prompt_len`` tokens) is graded-complete.

    It decodes the completion alone, without its prompt (cheaper at every step): that may lose a leading
    space of the first token (SentencePiece-style decoders, see :func:`decode_completions`), which changes
    neither check of :func:`graded_part_complete` (code needs a line break before a non-space character,
    translation strips leading whitespace)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, kind: str) -> None:
        self.tokenizer, self.prompt_len, self.kind = tokenizer, prompt_len, kind

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [graded_part_complete(t, self.kind) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _fenced_block(text: str) -> tuple[str, bool] | None:
    """``(content, closed)`` of the Markdown code block a completion opens with (after optional blank space;
    the opening fence line, with its language tag, is dropped), or None when it does not open with a fence.
    The content stays open until its opening line is complete."""
    stripped = text.lstrip()
    if not stripped.startswith("```"):
        return None
    head, newline, body = stripped.partition("\n")
    if not newline:
        return "", False
    end = re.search(r"^[ \t]*```", body, flags=re.M)
    return (body[: end.start()], True) if end else (body, False)


def truncate_completion(text: str, kind: str) -> str:
    """Cut a raw generation to the part that is graded (see the module docstring)."""
    if kind in CODE_KINDS:
        fenced = _fenced_block(text)
        if fenced is not None:
            return fenced[0]
        match = _TOP_LEVEL_LINE.search(text)
        return text[: match.start() + 1] if match else text
    if kind == "translation":
        return text.strip().split("\n", 1)[0].strip() if text.strip() else ""
    return text


#: the user message that asks an instruction-tuned model for a code completion (``chat=True``): the prompt
#: (a function header and docstring) inside a Python code block; the answer is graded as its fenced block
CODE_INSTRUCTION = "Complete this Python function. Answer with the whole function in a Python code block.\n"


def chat_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], kind: str) -> list[str]:
    """``prompts`` as user turns of the tokenizer's chat template, each followed by the assistant's header
    (``add_generation_prompt``). Code prompts are wrapped as :data:`CODE_INSTRUCTION` plus a fenced block;
    other prompts are sent as they are. For instruction-tuned models, whose raw continuation of a bare
    function header is prose; the paper's base models complete raw prompts (``chat=False``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: true, but the tokenizer has no chat template (a base model?)")

    def message(prompt: str) -> str:
        return f"{CODE_INSTRUCTION}```python\n{prompt}```" if kind in CODE_KINDS else prompt

    return [tokenizer.apply_chat_template([{"role": "user", "content": message(p)}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


@dataclass
class Generations:
    """``n`` completions per prompt, prompt-major (row ``i * n + j`` is sample ``j`` of prompt ``i``)."""

    prompt_ids: torch.Tensor  # [B*n, P] left-padded prompt tokens
    prompt_mask: torch.Tensor  # [B*n, P]
    completion_ids: torch.Tensor  # [B*n, M] generated tokens (pad after EOS)
    completion_mask: torch.Tensor  # [B*n, M] 1 on generated tokens up to and including the first EOS
    texts: list[str]  # decoded, truncated completions (len B*n)
    raw_texts: list[str]  # decoded completions before stop-sequence truncation


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor
) -> list[str]:
    """The text of each completion ``[R, M]`` as it continues its prompt ``[R, P]`` (left-padded, ``prompt_mask``).

    Decoded in context: ``decode(prompt + completion)`` minus ``decode(prompt)``. Decoding the completion alone
    is wrong for SentencePiece-style tokenizers (Llama 2, Mistral, Gemma), whose decoder drops the leading
    space of the first token: a completion ``"    return x"`` would come back with three spaces of
    indentation. Byte-level tokenizers (GPT-2, Llama 3, Qwen, SmolLM2) give the same text either way. Special
    tokens are skipped; a row whose full decode does not start with its prompt's decode (not seen with
    either kind) falls back to decoding the completion alone.
    """
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask, strict=True)]
    rows = completion.tolist()
    heads = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    fulls = tokenizer.batch_decode([p + c for p, c in zip(prompts, rows, strict=True)], skip_special_tokens=True)
    alone = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return [full[len(head):] if full.startswith(head) else solo
            for head, full, solo in zip(heads, fulls, alone, strict=True)]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    kind: str,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    max_length: int | None = None,
    stop_when_graded: bool = False,
    device: torch.device | None = None,
    chat: bool = False,
) -> Generations:
    """Complete every prompt ``num_samples`` times (see the module docstring).

    ``max_length`` (default: the model's ``max_position_embeddings``) bounds prompt + completion; longer
    prompts keep their last ``max_length - max_new_tokens`` tokens. ``stop_when_graded``: stop each row once
    its truncated completion is final (``texts`` unchanged; ``completion_ids`` padded after the stop).
    ``device``: where the prompts go (default: the device of the model's first parameter; give the compute
    device when parameters live elsewhere, e.g. offloaded to the CPU by FSDP). ``chat``: send each prompt as a
    user turn of the tokenizer's chat template (:func:`chat_prompts`; ``prompt_ids`` are then the templated
    prompts).
    """
    device = device or next(model.parameters()).device
    if chat:
        prompts = chat_prompts(tokenizer, prompts, kind)
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    trunc = {} if limit is None else {"truncation": True, "max_length": max(1, limit - max_new_tokens)}
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt",
                        **trunc)
    finally:
        tokenizer.truncation_side = side
    ids = enc["input_ids"].to(device).repeat_interleave(num_samples, dim=0)
    mask = enc["attention_mask"].to(device).repeat_interleave(num_samples, dim=0)
    sample = temperature > 0
    # top_k=0: no top-k truncation (HF's default generation config would otherwise apply top_k=50, and the
    # samples would not come from the tempered distribution the policy loss scores)
    kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {
        "do_sample": False}
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            stop = StoppingCriteriaList([_StopWhenGraded(tokenizer, ids.shape[1], kind)] if stop_when_graded else [])
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 stopping_criteria=stop, **kwargs)
    finally:
        model.train(was_training)
    completion = out[:, ids.shape[1] :]
    is_eos = completion == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    completion_mask = (~after_eos).long()
    raw = decode_completions(tokenizer, ids, mask, completion.masked_fill(after_eos | is_eos, tokenizer.pad_token_id))
    return Generations(ids, mask, completion.masked_fill(after_eos, tokenizer.pad_token_id), completion_mask,
                       [truncate_completion(t, kind) for t in raw], raw)


def generate_batched(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, batch_size: int,
    seed: int = 0, **kwargs: object,
) -> list[list[str]]:
    """:func:`generate` over prompt batches for evaluation; returns the truncated completions, ``n`` per
    prompt, in the order of ``prompts``.

    Prompts are batched in order of token length (stable), so each left-padded batch is about as long as its
    longest prompt rather than the longest of the whole list (HumanEval: 40 k instead of 72 k prefill
    tokens), and rows stop once their graded part is complete (``stop_when_graded``). Batch ``b`` of the
    sorted list samples with seed ``seed + b * batch_size``: deterministic for a given prompt list.
    """
    n = int(kwargs.get("num_samples", 1))
    kwargs.setdefault("stop_when_graded", True)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    out: list[list[str]] = [[] for _ in prompts]
    for i in range(0, len(order), batch_size):
        batch = order[i : i + batch_size]
        gens = generate(model, tokenizer, [prompts[k] for k in batch], seed=seed + i, **kwargs)
        for row, k in enumerate(batch):
            out[k] = gens.texts[row * n : (row + 1) * n]
    return out


def completion_logprobs(
    model: torch.nn.Module, gens: Generations, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probs ``log softmax(z / T)`` of the generated tokens under ``model`` (differentiable): [B*n, M].

    One forward over ``[prompt | completion]``; only the completion rows of the logits are normalised.
    """
    ids = torch.cat([gens.prompt_ids, gens.completion_ids], dim=1)
    attn = torch.cat([gens.prompt_mask, gens.completion_mask], dim=1)
    positions = (attn.cumsum(dim=1) - 1).clamp_min(0)
    P = gens.prompt_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits[:, P - 1 : -1]
    logp = torch.log_softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    return logp.gather(-1, gens.completion_ids.unsqueeze(-1)).squeeze(-1)
