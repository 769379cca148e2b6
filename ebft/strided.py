"""Strided block-parallel sampling and scoring (docs/algorithm.md §2).

Geometry
--------
A training chunk ``x`` has ``L`` tokens. Block ``k`` (``k = 0 … K-1``) has the nested prefix
``c_k = x[0 : C + k*s]`` and a ground-truth continuation ``y_k = x[C + k*s : C + k*s + G]``, where ``C`` is
the context length of block 0, ``s`` the stride and ``G`` the number of generated tokens per block::

    K = (L - G - C) / s + 1          (must be an integer)
    S = L + G * K                    (length of the full sequence after generation)

Full-sequence layout (step-major, block-minor)
----------------------------------------------
::

    positions 0 … L-1       the ground-truth chunk x (never modified)
    position  L + t*K + k   generated token t (t = 0 … G-1) of block k

``generated`` tensors returned by the samplers are *block-major*: ``[B, n, K, G]`` (``n`` = samples per
chunk). :func:`build_strided_sequence` turns ``input_ids [B, L]`` plus ``generated [B, n, K, G]`` into the
step-major full sequence ``[B*n, S]`` (the ``n`` samples of a chunk are consecutive rows), and
:func:`split_strided_sequence` inverts it. :func:`gen_region_to_block_major` /
:func:`block_major_to_gen_region` do the same reshaping for per-token tensors with trailing dimensions
(for example hidden states ``[B*n, G*K, D] <-> [B*n, K, G, D]``).

Attention mask and position ids
-------------------------------
With ``t`` generation steps present (``generation_step = t``, ``0 <= t <= G``) the sequence has length
``S_t = L + t*K``. Query row ``q`` may attend key column ``j`` iff

* chunk row ``q < L``: ``j <= q`` (plain causal attention, never a generated column);
* generated row ``q = L + t'*K + k``: ``j < C + k*s`` (block ``k``'s prefix), or ``j = L + t''*K + k`` with
  ``t'' <= t'`` (its own block's earlier generated tokens and itself).

The mask is additive, in the model dtype: ``0`` where allowed, ``torch.finfo(dtype).min`` where forbidden
(never a bool mask: the eager attention of ``transformers`` would *add* a bool mask as 0/1), with shape
``[1, 1, S_t, S_t]`` broadcast over the batch. Position ids ``[1, S_t]``: chunk token ``j`` gets ``j``,
generated token ``(t, k)`` gets ``C + k*s + t``, the position of its ground-truth counterpart. Hence each
block is computed exactly as a plain causal forward over ``c_k || ŷ_k``.

Which logit predicts which token (used both when sampling and when scoring)
---------------------------------------------------------------------------
* chunk target ``x[j+1]``: row ``j``;
* first generated token of block ``k``: row ``C + k*s - 1`` (last prefix token);
* generated token ``(t >= 1, k)``: row ``L + (t-1)*K + k`` (previous token of the same block).

This is *not* the ordinary causal shift of the full sequence.

Shared chunk and block groups
-----------------------------
The chunk rows of the strided mask are plain causal attention and never see a generated token, so the chunk
can be computed once per chunk instead of once per sample: :func:`prefill_chunk` runs the causal forward
over ``input_ids [B, L]`` with a KV cache, and :func:`forward_block_groups` feeds generated tokens against
that cache (replicated over the ``n`` samples) with the generated rows of the strided mask. The blocks are fed
in :data:`BLOCK_GROUPS` groups of consecutive blocks (:func:`block_groups`); group ``[k0, k1)`` attends only
the first ``C + (k1-1)*s`` chunk keys (its longest prefix), so the dense masked attention skips most of the
chunk columns the early blocks can never see. The sampler, the scorer (``share_chunk=True``) and the feature
network (:mod:`ebft.features`, ``share_chunk=True``) all use these two functions; ``B*L + B*n*G*K`` instead
of ``B*n*(L + G*K)`` token positions.

Sampling
--------
:func:`strided_sample` prefills the chunk once (:func:`prefill_chunk`), reads step-0 logits at rows
``C + k*s - 1``, replicates the cache over the ``n`` samples and then runs ``G - 1`` incremental forwards
that each feed the ``K`` tokens of the previous step (one per block) with the mask rows of
:func:`build_strided_step_mask_and_positions`. ``use_cache=False`` (:func:`strided_generate_recompute`) is
the reference path (full forward over the growing sequence at every step, no cache); both consume the random
generator identically (one inverse-CDF draw per step over ``[B*n*K, V]`` probabilities, one ``torch.rand``
number per row).

Scoring
-------
:func:`strided_logprobs` runs one forward (with gradients) over the full ``[B*n, S]`` sequences with the
complete strided mask (or, with ``share_chunk=True``, the chunk once per chunk and the generated tokens
against its differentiable KV cache), and gathers log-probabilities from the final hidden states in row
chunks, so the ``[S, vocab]`` float32 logits are never materialised (each chunk is recomputed in the
backward pass via activation checkpointing).

Geometry arguments
------------------
Every public entry point takes the geometry as a :class:`StridedLayout` built once by the caller
(``layout=``); the raw ``context_len=``/``stride=`` (and ``gen_len=`` for the samplers) keywords are still
accepted and turned into a layout by :func:`resolve_layout`.

Model plumbing (backbone, LM head, KV cache) comes from :mod:`ebft.modeling`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from ebft.geometry import check_geometry
from ebft.modeling import (
    backbone,
    cache_kwarg,
    checkpointing_drops_cache,
    lm_head,
    lm_logits,
    model_dtype,
    new_cache,
)

__all__ = [
    "BLOCK_GROUPS",
    "RunBody",
    "SamplingOptions",
    "StridedLayout",
    "StridedSample",
    "additive_mask",
    "block_groups",
    "block_major_to_gen_region",
    "build_strided_allowed",
    "build_strided_mask_and_positions",
    "build_strided_sequence",
    "build_strided_step_mask_and_positions",
    "extend_chunk_metadata",
    "forward_block_groups",
    "gen_region_to_block_major",
    "last_hidden_state",
    "prefill_chunk",
    "resolve_layout",
    "sample_tokens",
    "split_strided_sequence",
    "strided_generate",
    "strided_generate_recompute",
    "strided_generate_with_logprobs",
    "strided_logprobs",
    "strided_sample",
]


# --------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StridedLayout:
    """Geometry of strided block-parallel sampling over one chunk.

    Attributes:
        seq_len: ``L``, chunk length.
        context_len: ``C``, prefix length of block 0 (block ``k`` sees ``C + k*s`` tokens).
        stride: ``s``, offset between consecutive block starts.
        gen_len: ``G``, tokens generated per block.

    Raises:
        ValueError: if a value is not a positive integer, if ``C + G > L``, or if ``(L - G - C)`` is not
            divisible by ``s``.
    """

    seq_len: int
    context_len: int
    stride: int
    gen_len: int

    def __post_init__(self) -> None:
        check_geometry(self.seq_len, self.context_len, self.stride, self.gen_len)

    @property
    def num_blocks(self) -> int:
        """``K = (L - G - C) / s + 1``."""
        return (self.seq_len - self.gen_len - self.context_len) // self.stride + 1

    @property
    def total_len(self) -> int:
        """``S = L + G*K``, the full sequence length after generation."""
        return self.seq_len + self.gen_len * self.num_blocks

    def current_len(self, generation_step: int) -> int:
        """``S_t = L + t*K``: sequence length with ``t`` generation steps present."""
        self._check_generation_step(generation_step)
        return self.seq_len + generation_step * self.num_blocks

    def prefix_ends(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``LongTensor[K]``: ``C + k*s``, the prefix length of each block."""
        return self.context_len + self.stride * torch.arange(self.num_blocks, device=device)

    def target_positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``LongTensor[K, G]``: ``C + k*s + t``.

        This is both the position id of generated token ``(t, k)`` and the chunk index of its ground-truth
        counterpart ``y_k[t]``.
        """
        steps = torch.arange(self.gen_len, device=device)
        return self.prefix_ends(device)[:, None] + steps[None, :]

    def generated_slots(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``LongTensor[K, G]``: ``L + t*K + k``, the full-sequence index of generated token ``(t, k)``."""
        k = torch.arange(self.num_blocks, device=device)
        t = torch.arange(self.gen_len, device=device)
        return self.seq_len + t[None, :] * self.num_blocks + k[:, None]

    def prediction_rows(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``LongTensor[K, G]``: full-sequence row whose logits predict generated token ``(t, k)``.

        ``C + k*s - 1`` for ``t = 0`` and ``L + (t-1)*K + k`` for ``t >= 1`` (docs/algorithm.md §2.5).
        """
        rows = self.generated_slots(device) - self.num_blocks
        rows[:, 0] = self.prefix_ends(device) - 1
        return rows

    def _check_generation_step(self, generation_step: int) -> None:
        if not 0 <= generation_step <= self.gen_len:
            raise ValueError(f"generation_step must be in [0, {self.gen_len}], got {generation_step}")


def resolve_layout(
    layout: StridedLayout | None,
    input_ids: torch.Tensor,
    generated: torch.Tensor | None = None,
    *,
    context_len: int | None = None,
    stride: int | None = None,
    gen_len: int | None = None,
) -> StridedLayout:
    """The geometry of a call, checked against its tensors.

    Either ``layout`` (built once by the caller) or the raw ``context_len`` and ``stride`` (``C``, ``s``) are
    given; ``L`` is read from ``input_ids [B, L]`` and ``G`` from ``generated [B, n, K, G]`` (scoring,
    features) or ``gen_len`` (sampling). ``gen_len`` may accompany a layout, as a check.

    Raises:
        ValueError: if both or neither geometry forms are given, if a tensor has the wrong rank, or if the
            layout does not match the tensors (``L``, ``G``, ``K``).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
    if generated is not None and (generated.dim() != 4 or generated.shape[0] != input_ids.shape[0]):
        raise ValueError(
            f"expected input_ids [B, L] and generated [B, n, K, G], got {tuple(input_ids.shape)} and "
            f"{tuple(generated.shape)}"
        )
    L = input_ids.shape[1]
    G = generated.shape[-1] if generated is not None else gen_len
    if layout is None:
        if context_len is None or stride is None or G is None:
            raise ValueError("give either layout or the geometry keywords context_len and stride (and gen_len)")
        layout = StridedLayout(L, context_len, stride, G)
    elif context_len is not None or stride is not None:
        raise ValueError("give either layout or (context_len, stride), not both")
    K = layout.num_blocks
    if (
        layout.seq_len != L
        or (G is not None and layout.gen_len != G)
        or (gen_len is not None and layout.gen_len != gen_len)
        or (generated is not None and generated.shape[2] != K)
    ):
        shape = "" if generated is None else f" and generated {tuple(generated.shape)}"
        raise ValueError(f"layout {layout} (K={K}) does not match input_ids {tuple(input_ids.shape)}{shape}")
    return layout


# --------------------------------------------------------------------------------------------------------
# Masks and position ids
# --------------------------------------------------------------------------------------------------------


def _token_coords(
    layout: StridedLayout, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per full-sequence index: ``(block, step, visible_chunk_cols, position_id)``.

    ``block``/``step`` are ``-1`` for chunk tokens. ``visible_chunk_cols`` is the number of leading chunk
    columns the token may attend (``j + 1`` for chunk token ``j``, ``C + k*s`` for a generated token).
    """
    L, K = layout.seq_len, layout.num_blocks
    is_gen = index >= L
    offset = (index - L).clamp(min=0)
    step = torch.where(is_gen, offset // K, -1)
    block = torch.where(is_gen, offset % K, -1)
    prefix = layout.context_len + block * layout.stride
    visible = torch.where(is_gen, prefix, index + 1)
    position = torch.where(is_gen, prefix + step, index)
    return block, step, visible, position


def build_strided_allowed(
    layout: StridedLayout,
    generation_step: int | None = None,
    *,
    query_rows: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    _check_rows: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean strided attention pattern and position ids (rules of docs/algorithm.md §2.4), fully vectorised.

    Args:
        layout: the geometry.
        generation_step: number of generated steps present, ``t`` in ``0 … G`` (default ``G``). Key columns
            are ``0 … S_t - 1`` with ``S_t = L + t*K``.
        query_rows: ``LongTensor[Q]`` full-sequence indices of the query rows (default: all ``S_t`` rows).
        device: device of the outputs.

    Returns:
        ``allowed``: ``BoolTensor[Q, S_t]`` (True = may attend) and ``position_ids``: ``LongTensor[Q]``.
    """
    t = layout.gen_len if generation_step is None else generation_step
    kv_len = layout.current_len(t)
    keys = torch.arange(kv_len, device=device)
    if query_rows is None:
        queries = keys
    else:
        queries = query_rows.to(device=keys.device, dtype=torch.long)
        if _check_rows and queries.numel() and (int(queries.min()) < 0 or int(queries.max()) >= kv_len):
            raise ValueError(f"query_rows must lie in [0, {kv_len}) for generation_step={t}")
    q_block, q_step, q_visible, q_pos = _token_coords(layout, queries)
    k_block, k_step, _, _ = _token_coords(layout, keys)
    key_is_chunk = keys < layout.seq_len
    chunk_cols = key_is_chunk[None, :] & (keys[None, :] < q_visible[:, None])
    same_block_cols = (
        (~key_is_chunk)[None, :]
        & (q_block[:, None] >= 0)
        & (k_block[None, :] == q_block[:, None])
        & (k_step[None, :] <= q_step[:, None])
    )
    return chunk_cols | same_block_cols, q_pos


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool pattern -> additive float mask of ``dtype``: ``0`` where allowed, ``finfo(dtype).min`` elsewhere.

    ``finfo.min`` rather than ``-inf`` so that a fully masked row cannot produce NaNs.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def build_strided_mask_and_positions(
    layout: StridedLayout,
    generation_step: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full strided 4D additive mask and position ids with ``t = generation_step`` steps present.

    Returns:
        ``mask``: ``Tensor[1, 1, S_t, S_t]`` of ``dtype`` (broadcasts over the batch) and
        ``position_ids``: ``LongTensor[1, S_t]``, where ``S_t = L + t*K`` and ``t`` defaults to ``G``.
    """
    allowed, positions = build_strided_allowed(layout, generation_step, device=device)
    return additive_mask(allowed, dtype)[None, None], positions[None]


def build_strided_step_mask_and_positions(
    layout: StridedLayout,
    step: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask rows and position ids of the ``K`` tokens of generation step ``step`` only (KV-cached decoding).

    These are the rows ``L + step*K + k`` (``k = 0 … K-1``) of the full mask with ``step + 1`` steps present,
    so the key length is ``L + (step+1)*K`` = cached tokens plus the ``K`` tokens being fed.

    Returns:
        ``mask``: ``Tensor[1, 1, K, L + (step+1)*K]`` and ``position_ids``: ``LongTensor[1, K]`` equal to
        ``C + k*s + step``.
    """
    if not 0 <= step < layout.gen_len:
        raise ValueError(f"step must be in [0, {layout.gen_len}), got {step}")
    K = layout.num_blocks
    rows = layout.seq_len + step * K + torch.arange(K, device=device)
    # rows are valid by construction: skip the range check (it would synchronise a GPU stream)
    allowed, positions = build_strided_allowed(
        layout, step + 1, query_rows=rows, device=device, _check_rows=False
    )
    return additive_mask(allowed, dtype)[None, None], positions[None]


# --------------------------------------------------------------------------------------------------------
# Layout conversions
# --------------------------------------------------------------------------------------------------------


def gen_region_to_block_major(x: torch.Tensor, num_blocks: int, dim: int = 1) -> torch.Tensor:
    """Reshape a step-major generated region (size ``G*K`` at ``dim``) into block-major ``(K, G)``.

    Example: hidden states ``[N, G*K, D] -> [N, K, G, D]`` (``dim=1``).
    """
    dim = dim % x.dim()
    size = x.shape[dim]
    if size % num_blocks != 0:
        raise ValueError(f"dimension {dim} has size {size}, not a multiple of num_blocks={num_blocks}")
    x = x.unflatten(dim, (size // num_blocks, num_blocks))  # (G, K)
    return x.transpose(dim, dim + 1)  # (K, G)


def block_major_to_gen_region(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`gen_region_to_block_major`: merge block-major ``(K, G)`` at ``(dim, dim+1)`` into
    a step-major ``G*K`` dimension (index ``t*K + k``)."""
    dim = dim % x.dim()
    return x.transpose(dim, dim + 1).flatten(dim, dim + 1)


def build_strided_sequence(input_ids: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Full step-major sequences from chunks and block-major samples.

    Args:
        input_ids: ``LongTensor[B, L]``.
        generated: ``LongTensor[B, n, K, G]`` (block-major).

    Returns:
        ``LongTensor[B*n, S]``: row ``b*n + i`` is ``x_b`` followed by sample ``i`` of chunk ``b`` with token
        ``(t, k)`` at index ``L + t*K + k``.
    """
    if generated.dim() != 4 or generated.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"generated must be [B, n, K, G] with B = input_ids.shape[0] = {input_ids.shape[0]}, "
            f"got {tuple(generated.shape)}"
        )
    B, n, K, G = generated.shape
    chunk = input_ids.repeat_interleave(n, dim=0)
    gen = block_major_to_gen_region(generated.reshape(B * n, K, G), dim=1)
    return torch.cat([chunk, gen.to(chunk.dtype)], dim=1)


def split_strided_sequence(
    sequences: torch.Tensor, layout: StridedLayout, *, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`build_strided_sequence`.

    Args:
        sequences: ``[B*n, S]`` step-major full sequences (``n`` consecutive rows per chunk).
        layout: the geometry (``S`` must equal ``layout.total_len``).
        num_samples: ``n``.

    Returns:
        ``input_ids [B, L]`` (taken from the first sample row of each chunk) and ``generated [B, n, K, G]``.
    """
    rows, length = sequences.shape
    if length != layout.total_len or rows % num_samples != 0:
        raise ValueError(
            f"sequences {tuple(sequences.shape)} do not match S={layout.total_len} and "
            f"num_samples={num_samples}"
        )
    L, K = layout.seq_len, layout.num_blocks
    input_ids = sequences[::num_samples, :L]
    generated = gen_region_to_block_major(sequences[:, L:], K, dim=1)
    return input_ids, generated.reshape(rows // num_samples, num_samples, K, layout.gen_len)


def extend_chunk_metadata(meta: torch.Tensor, layout: StridedLayout) -> torch.Tensor:
    """Extend per-chunk-token metadata ``[..., L]`` to the full sequence ``[..., S]`` (docs/algorithm.md §2.3).

    Generated token ``(t, k)`` inherits the value at its ground-truth position ``C + k*s + t``.
    """
    if meta.shape[-1] != layout.seq_len:
        raise ValueError(f"meta last dimension must be L={layout.seq_len}, got {meta.shape[-1]}")
    index = layout.target_positions(meta.device).T.reshape(-1)  # step-major
    return torch.cat([meta, meta.index_select(-1, index)], dim=-1)


# --------------------------------------------------------------------------------------------------------
# Shared chunk and block groups
# --------------------------------------------------------------------------------------------------------

BLOCK_GROUPS: int = 4
"""Generated tokens fed against a shared chunk (:func:`forward_block_groups`) go in this many groups of
consecutive blocks (scoring and features with ``share_chunk=True``)."""

RunBody = Callable[..., Sequence[torch.Tensor]]
"""``run(**forward_kwargs) -> outputs``: one forward of a transformer body, returning the per-token outputs a
caller needs (e.g. ``[last_hidden_state]`` or selected ``hidden_states``), each ``[rows, tokens, ...]``."""


def last_hidden_state(body: nn.Module) -> RunBody:
    """The :data:`RunBody` returning ``[body(**kwargs).last_hidden_state]`` (``[rows, tokens, H]``)."""

    def run(**kwargs: object) -> list[torch.Tensor]:
        return [body(**kwargs).last_hidden_state]

    return run


def block_groups(num_blocks: int, groups: int = BLOCK_GROUPS) -> list[tuple[int, int]]:
    """Split blocks ``0 … K-1`` into ``min(groups, K)`` ranges ``[k0, k1)`` of consecutive blocks, with
    bounds ``round(i * K / groups)``."""
    groups = max(1, min(groups, num_blocks))
    bounds = [round(i * num_blocks / groups) for i in range(groups + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def prefill_chunk(
    body: nn.Module, input_ids: torch.Tensor, run: RunBody | None = None
) -> tuple[Sequence[torch.Tensor], DynamicCache]:
    """Causal forward of the transformer ``body`` over the chunks ``input_ids [B, L]`` with a fresh KV cache.

    Chunk row ``j`` sees ``x[:j+1]`` with positions ``0 … j``: exactly the chunk rows of the strided mask.
    Under autograd the cache keeps its graph, so gradients from everything fed against it reach the chunk.

    Args:
        body: the transformer body (:func:`ebft.modeling.backbone`).
        input_ids: ``LongTensor[B, L]``.
        run: the forward to use (default :func:`last_hidden_state`).

    Returns:
        ``run``'s outputs (each ``[B, L, ...]``) and the filled ``DynamicCache`` (per layer
        ``keys, values [B, kv_heads, L, head_dim]``).
    """
    cache = new_cache(body)
    run = last_hidden_state(body) if run is None else run
    outputs = run(input_ids=input_ids, use_cache=True, **{cache_kwarg(body): cache})
    return outputs, cache


def _block_group_inputs(
    body: nn.Module,
    prefix_layers: list[tuple[torch.Tensor, torch.Tensor]],
    layout: StridedLayout,
    k0: int,
    k1: int,
    steps: int,
    num_samples: int,
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """KV cache, attention pattern and position ids to feed generation steps ``0 … steps-1`` of blocks
    ``[k0, k1)`` after a chunk prefill (``prefix_layers``: per-layer cached ``(keys, values)`` of the chunk,
    batch ``B``).

    The group only sees the first ``P = C + (k1-1)*s`` chunk positions (its longest prefix), so the cache holds
    ``keys[:, :, :P]`` expanded to ``B*num_samples`` rows (differentiable slicing and ``repeat_interleave``).
    Tokens are fed step-major within the group (index ``t*Kg + j`` for block ``k0 + j``). Returns the cache,
    ``allowed [steps*Kg, P + steps*Kg]`` (chunk columns ``< C + k*s``, own block's steps ``<= t``) and
    ``position_ids [steps*Kg]`` (``C + k*s + t``).
    """
    device = prefix_layers[0][0].device
    Kg, P = k1 - k0, layout.context_len + (k1 - 1) * layout.stride
    cache = new_cache(body)
    for i, (keys, values) in enumerate(prefix_layers):
        cache.update(keys[:, :, :P], values[:, :, :P], i)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
    t_idx = torch.arange(steps, device=device).repeat_interleave(Kg)
    k_idx = torch.arange(k0, k1, device=device).repeat(steps)
    prefix = layout.context_len + k_idx * layout.stride
    allowed = torch.cat(
        [
            torch.arange(P, device=device)[None, :] < prefix[:, None],
            (k_idx[None, :] == k_idx[:, None]) & (t_idx[None, :] <= t_idx[:, None]),
        ],
        dim=1,
    )
    return cache, allowed, prefix + t_idx


def forward_block_groups(
    body: nn.Module,
    chunk_cache: DynamicCache,
    generated: torch.Tensor,
    layout: StridedLayout,
    *,
    steps: int,
    run: RunBody | None = None,
    groups: int = BLOCK_GROUPS,
) -> list[torch.Tensor]:
    """Feed generation steps ``0 … steps-1`` of every sample against a shared chunk's KV cache.

    Blocks go in :func:`block_groups` groups of consecutive blocks ``[k0, k1)``; one forward per group over
    ``B*n`` rows of ``steps*Kg`` tokens (``Kg = k1 - k0``, step-major within the group) with a cache holding
    the first ``C + (k1-1)*s`` chunk keys replicated over the ``n`` samples, mask rows ``allowed(t, k)`` =
    chunk columns ``j < C + k*s`` plus the same block's steps ``t' <= t``, and position ids ``C + k*s + t``.
    Output ``(t, k)`` is thus exactly the generated row ``L + t*K + k`` of a full strided forward (it sees
    ``c_k || ŷ_k[:t+1]``).

    Args:
        body: the transformer body that filled ``chunk_cache`` (:func:`prefill_chunk`).
        chunk_cache: KV cache of the chunks ``[B, ...]`` (gradients flow through it when it has a graph).
        generated: ``LongTensor[B, n, K, G]`` block-major samples (``steps <= G`` steps are fed).
        layout: the geometry.
        steps: number of generation steps to feed (``G - 1`` for scoring: the last step predicts nothing).
        run: the forward to use (default :func:`last_hidden_state`).
        groups: number of block groups.

    Returns:
        ``run``'s outputs, each reordered block-major: ``[B*n, K, steps, ...]``, entry ``[b*n + i, k, t]``
        for token ``(t, k)`` of sample ``i`` of chunk ``b``.
    """
    B, n, K, _ = generated.shape
    run = last_hidden_state(body) if run is None else run
    cache_name = cache_kwarg(body)
    dtype = model_dtype(body)
    prefix_layers = [(layer.keys, layer.values) for layer in chunk_cache.layers]  # [B, heads, L, d]
    device = prefix_layers[0][0].device
    pieces: list[list[torch.Tensor]] = []
    for k0, k1 in block_groups(K, groups):
        Kg = k1 - k0
        group_cache, allowed, positions = _block_group_inputs(body, prefix_layers, layout, k0, k1, steps, n)
        tokens = generated[:, :, k0:k1, :steps].reshape(B * n, Kg, steps).transpose(1, 2).reshape(B * n, -1)
        outputs = run(
            input_ids=tokens.to(device=device, dtype=torch.long),
            attention_mask=additive_mask(allowed, dtype)[None, None],
            position_ids=positions[None].expand(B * n, -1),
            use_cache=True,
            **{cache_name: group_cache},
        )  # each [B*n, steps*Kg, ...], index t*Kg + j for token (t, k0 + j)
        pieces.append([out.unflatten(1, (steps, Kg)).transpose(1, 2) for out in outputs])
        del group_cache, outputs
    return [torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True)]


# --------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter on (unnormalised ok) probabilities ``[N, V]``.

    Sort descending, drop every token whose cumulative probability *before* it exceeds ``top_p``; the top
    token is always kept. The result is not renormalised (the inverse-CDF draw does not need it).
    """
    sorted_p, order = probs.sort(dim=-1, descending=True)
    total = sorted_p.sum(dim=-1, keepdim=True)
    before = (sorted_p.cumsum(dim=-1) - sorted_p) / total
    drop_sorted = before > top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits [..., V]``.

    ``temperature > 0``: ``p = softmax(z / T)``, nucleus-filtered when ``top_p < 1``, one inverse-CDF draw
    per row (:func:`_inverse_cdf_draw`: one ``torch.rand`` number per row from ``generator``, which must live
    on ``logits.device``; ``None`` = global RNG). ``temperature == 0``: greedy ``argmax`` (no RNG consumed).

    Returns:
        ``tokens``: ``LongTensor[...]`` and ``logprobs``: ``Tensor[...]`` float32, ``log softmax(z / T)`` of
        the drawn token, i.e. under the tempered distribution *before* nucleus filtering (the quantity that
        :func:`strided_logprobs` recomputes). For ``temperature == 0`` the log-probs are at ``T = 1``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if temperature == 0:
        logp = F.log_softmax(flat, dim=-1)
        tokens = flat.argmax(dim=-1)
    else:
        logp = F.log_softmax(flat / temperature, dim=-1)
        probs = logp.exp()
        if top_p < 1.0:
            probs = _top_p_filter(probs, top_p)
        tokens = _inverse_cdf_draw(probs, generator)
    token_logp = logp.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens.reshape(lead), token_logp.reshape(lead)


def _inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row of unnormalised non-negative ``probs [N, V]`` -> ``LongTensor[N]``.

    Inverse CDF: ``u ~ U[0, total)`` per row (one ``torch.rand`` number), token = first index whose running
    sum exceeds ``u``. Same distribution as ``torch.multinomial(probs, 1)`` but several times faster on CPU
    (``multinomial`` draws an exponential variate for every one of the ``V`` entries). A zero-probability
    token is never drawn: its running sum equals its predecessor's, and ``u`` is kept strictly below the total.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class StridedSample(NamedTuple):
    """Result of :func:`strided_sample`.

    Attributes:
        tokens: ``LongTensor[B, n, K, G]`` generated tokens, block-major.
        logprobs: ``Tensor[B, n, K, G]`` float32 sampling-time log-probs (see :func:`sample_tokens`).
        step_logits: ``Tensor[B, n, K, G, V]`` float32 logits each token was drawn from (only when requested).
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    step_logits: torch.Tensor | None


def _check_sampling_args(num_samples: int, temperature: float, top_p: float) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _cached_step_logits(
    model: nn.Module, input_ids: torch.Tensor, layout: StridedLayout, num_samples: int
) -> Generator[torch.Tensor, torch.Tensor, None]:
    """Generator protocol for the KV-cached path: yields ``[N, K, V]`` logits, receives ``[N, K]`` tokens."""
    body = backbone(model)
    cache_name = cache_kwarg(body)
    dtype = model_dtype(model)
    device = input_ids.device
    N = input_ids.shape[0] * num_samples
    # the chunk rows of the strided mask are exactly causal: one prefill, shared by the n samples
    (hidden,), cache = prefill_chunk(body, input_ids)  # [B, L, H]
    logits = lm_logits(model, hidden[:, layout.prefix_ends(device) - 1])  # [B, K, V]
    logits = logits.repeat_interleave(num_samples, dim=0)  # [N, K, V]
    del hidden
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
    for step in range(layout.gen_len):
        tokens = yield logits
        if step == layout.gen_len - 1:
            return
        mask, positions = build_strided_step_mask_and_positions(layout, step, dtype=dtype, device=device)
        out = body(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions.expand(N, -1),
            use_cache=True,
            **{cache_name: cache},
        )
        logits = lm_logits(model, out.last_hidden_state)  # [N, K, V]


def _recompute_step_logits(
    model: nn.Module, input_ids: torch.Tensor, layout: StridedLayout, num_samples: int
) -> Generator[torch.Tensor, torch.Tensor, None]:
    """Generator protocol for the reference path: full forward over the growing sequence at every step."""
    dtype = model_dtype(model)
    device = input_ids.device
    sequence = input_ids.repeat_interleave(num_samples, dim=0)  # [N, L]
    N, K, L = sequence.shape[0], layout.num_blocks, layout.seq_len
    for step in range(layout.gen_len):
        mask, positions = build_strided_mask_and_positions(layout, step, dtype=dtype, device=device)
        out = model(
            input_ids=sequence, attention_mask=mask, position_ids=positions.expand(N, -1), use_cache=False
        )
        if step == 0:
            rows = layout.prefix_ends(device) - 1
        else:
            rows = L + (step - 1) * K + torch.arange(K, device=device)
        tokens = yield out.logits[:, rows].float()
        sequence = torch.cat([sequence, tokens.to(sequence.dtype)], dim=1)


class SamplingOptions(TypedDict, total=False):
    """Keyword arguments of :func:`strided_sample` accepted by its wrappers (:func:`strided_generate`,
    :func:`strided_generate_with_logprobs`, :func:`strided_generate_recompute`)."""

    context_len: int
    stride: int
    gen_len: int
    num_samples: int
    temperature: float
    top_p: float
    generator: torch.Generator | None


@torch.no_grad()
def strided_sample(
    model: nn.Module,
    input_ids: torch.Tensor,
    layout: StridedLayout | None = None,
    *,
    context_len: int | None = None,
    stride: int | None = None,
    gen_len: int | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    return_step_logits: bool = False,
) -> StridedSample:
    """Strided block-parallel sampling: ``G`` steps, each drawing one token for every block.

    Step ``t`` draws ``ŷ_k[t] ~ softmax(z / T)`` (nucleus-filtered) for every block ``k`` of every sample,
    where ``z`` is the logit row that predicts token ``(t, k)``: ``C + k*s - 1`` for ``t = 0``, else the
    previous token of the same block, so block ``k`` is sampled exactly as a plain causal decode of
    ``c_k || ŷ_k``.

    Args:
        model: a ``transformers`` causal LM (backbone + LM head, :mod:`ebft.modeling`) that accepts 4D
            additive masks.
        input_ids: ``LongTensor[B, L]`` chunks.
        layout: the geometry (``seq_len`` must be ``L``); or give ``context_len``, ``stride`` and ``gen_len``
            (``C``, ``s``, ``G``; ``L`` is read from ``input_ids``).
        num_samples: ``n`` independent samples per chunk (consecutive rows ``b*n + i`` internally).
        temperature, top_p, generator: see :func:`sample_tokens`. Each step makes exactly one draw call over
            ``[B*n*K, V]`` rows, so both paths consume the generator identically.
        use_cache: KV-cached incremental decoding (default) or the no-cache recompute reference path.
        return_step_logits: also return the float32 logits each token was drawn from.

    Returns:
        :class:`StridedSample` with block-major ``tokens [B, n, K, G]``. The model is run in eval mode under
        ``torch.no_grad`` and its ``training`` flag is restored afterwards.
    """
    layout = resolve_layout(layout, input_ids, context_len=context_len, stride=stride, gen_len=gen_len)
    _check_sampling_args(num_samples, temperature, top_p)
    B = input_ids.shape[0]
    K, G = layout.num_blocks, layout.gen_len

    was_training = model.training
    model.eval()
    try:
        make = _cached_step_logits if use_cache else _recompute_step_logits
        steps = make(model, input_ids, layout, num_samples)
        tokens, logprobs, all_logits = [], [], []
        logits = next(steps)
        for step in range(G):
            tok, logp = sample_tokens(logits, temperature=temperature, top_p=top_p, generator=generator)
            tokens.append(tok)
            logprobs.append(logp)
            if return_step_logits:
                all_logits.append(logits)
            if step < G - 1:
                logits = steps.send(tok)
        steps.close()
    finally:
        model.train(was_training)

    def block_major(per_step: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(per_step, dim=2)  # [N, K, G, ...]
        return x.reshape(B, num_samples, K, G, *x.shape[3:])

    return StridedSample(
        tokens=block_major(tokens),
        logprobs=block_major(logprobs),
        step_logits=block_major(all_logits) if return_step_logits else None,
    )


def strided_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    layout: StridedLayout | None = None,
    **options: Unpack[SamplingOptions],
) -> torch.Tensor:
    """KV-cached strided sampling; returns block-major ``LongTensor[B, n, K, G]`` (see :func:`strided_sample`
    for the arguments)."""
    return strided_sample(model, input_ids, layout, **options).tokens


def strided_generate_with_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    layout: StridedLayout | None = None,
    **options: Unpack[SamplingOptions],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`strided_generate`, also returning the sampling-time log-probs ``[B, n, K, G]`` (float32,
    ``log softmax(z / T)`` of each drawn token; ``T = 1`` when ``temperature == 0``)."""
    out = strided_sample(model, input_ids, layout, **options)
    return out.tokens, out.logprobs


def strided_generate_recompute(
    model: nn.Module,
    input_ids: torch.Tensor,
    layout: StridedLayout | None = None,
    **options: Unpack[SamplingOptions],
) -> torch.Tensor:
    """Reference sampler without KV cache (a full forward over ``[chunk | generated so far]`` with the full
    strided mask at every step). For tests and benchmarks only; same output as :func:`strided_generate` and
    the same random-number consumption."""
    return strided_sample(model, input_ids, layout, use_cache=False, **options).tokens


# --------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------


def _token_logprobs_block(
    model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = lm_logits(model, hidden)
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _chunked_token_logprobs(
    model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, chunk_size: int
) -> torch.Tensor:
    """``log softmax(lm_head(hidden) / T)[target]`` for ``hidden [R, H]``, ``targets [R]`` -> ``[R]`` float32.

    Processes ``chunk_size`` rows at a time; with autograd enabled every chunk is activation-checkpointed, so
    only one chunk of ``[chunk_size, V]`` float32 logits exists at any time, in forward and in backward.
    """
    if chunk_size < 1:
        raise ValueError(f"logits_chunk_size must be >= 1, got {chunk_size}")
    use_checkpoint = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in lm_head(model).parameters())
    )
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start : start + chunk_size]
        tgt = targets[start : start + chunk_size]
        if use_checkpoint:
            pieces.append(checkpoint(_token_logprobs_block, model, h, tgt, temperature, use_reentrant=False))
        else:
            pieces.append(_token_logprobs_block(model, h, tgt, temperature))
    if not pieces:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


def strided_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    generated: torch.Tensor,
    layout: StridedLayout | None = None,
    *,
    context_len: int | None = None,
    stride: int | None = None,
    temperature: float = 1.0,
    logits_chunk_size: int = 1024,
    share_chunk: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score strided samples with one policy forward; differentiable.

    The policy runs over ``build_strided_sequence(input_ids, generated)`` (``[B*n, S]``) with the full
    strided mask (``generation_step = G``) and position ids. From the final hidden states ``h``:

    * ``gen_logprobs[b, i, k, t] = log softmax(lm_head(h[b*n+i, r]) / T)[ŷ_{b,i,k,t}]`` with
      ``r = C + k*s - 1`` for ``t = 0`` and ``r = L + (t-1)*K + k`` for ``t >= 1`` (never the ordinary
      causal shift of the full sequence);
    * ``chunk_logprobs[b, j] = log softmax(lm_head(h[b*n, j]))[x_b[j+1]]`` at ``T = 1`` for
      ``j = 0 … L-2``. Chunk rows never see generated tokens, so all ``n`` copies of a chunk give the same
      values (and the same gradient); the first copy is used.

    Log-softmaxes run in float32 over ``logits_chunk_size`` rows at a time (activation-checkpointed when
    gradients are enabled), so the full ``[B*n, S, V]`` logits are never materialised.

    Args:
        model: causal LM (backbone + LM head, :mod:`ebft.modeling`); its train/eval mode is left untouched.
        input_ids: ``LongTensor[B, L]``.
        generated: ``LongTensor[B, n, K, G]`` block-major samples.
        layout: the geometry; or give ``context_len`` and ``stride`` (``C``, ``s``; ``L`` and ``G`` are read
            from the inputs).
        temperature: ``T > 0`` applied to generated-token logits only.
        logits_chunk_size: rows per log-softmax chunk.
        share_chunk: compute the chunk once per chunk instead of once per sample: :func:`prefill_chunk` over
            ``input_ids [B, L]`` with a KV cache that keeps its autograd graph, then the first ``G-1``
            generated steps of every sample (the last step predicts nothing) with
            :func:`forward_block_groups`. Gradients of all samples flow into the one chunk computation and the
            CE term uses the same chunk logits. Same values and gradients as the unshared path up to float
            round-off (tested), ``B*L + B*n*(G-1)*K`` instead of ``B*n*(L + G*K)`` token positions. Falls back
            to the unshared path under gradient checkpointing (which drops the cache).

    Returns:
        ``gen_logprobs``: ``Tensor[B, n, K, G]`` and ``chunk_logprobs``: ``Tensor[B, L-1]``, float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for scoring, got {temperature}")
    layout = resolve_layout(layout, input_ids, generated, context_len=context_len, stride=stride)
    B, n, K, G = generated.shape
    L = layout.seq_len
    body = backbone(model)
    if share_chunk and not checkpointing_drops_cache(body):
        gen_hidden, chunk_hidden = _shared_chunk_hidden(body, input_ids, generated, layout)
    else:
        gen_hidden, chunk_hidden = _full_sequence_hidden(body, input_ids, generated, layout)
    H = chunk_hidden.shape[-1]
    gen_lp = _chunked_token_logprobs(
        model, gen_hidden.reshape(-1, H), generated.reshape(-1).to(input_ids.device), float(temperature),
        logits_chunk_size,
    )
    chunk_lp = _chunked_token_logprobs(
        model, chunk_hidden[:, : L - 1].reshape(-1, H), input_ids[:, 1:].reshape(-1), 1.0, logits_chunk_size
    )
    return gen_lp.reshape(B, n, K, G), chunk_lp.reshape(B, L - 1)


def _full_sequence_hidden(
    body: nn.Module, input_ids: torch.Tensor, generated: torch.Tensor, layout: StridedLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scoring hidden states from one forward over the full ``[B*n, S]`` strided sequences.

    Returns ``gen_hidden [B*n, K, G, H]`` (row ``prediction_rows[k, t]``, the row predicting token
    ``(t, k)``) and ``chunk_hidden [B, L, H]`` (chunk rows of the first sample of every chunk).
    """
    n = generated.shape[1]
    device = input_ids.device
    sequences = build_strided_sequence(input_ids, generated)  # [N, S]
    mask, positions = build_strided_mask_and_positions(
        layout, layout.gen_len, dtype=model_dtype(body), device=device
    )
    hidden = body(
        input_ids=sequences, attention_mask=mask, position_ids=positions.expand(sequences.shape[0], -1),
        use_cache=False,
    ).last_hidden_state  # [N, S, H]
    gen_hidden = hidden[:, layout.prediction_rows(device)]  # [N, K, G, H]
    return gen_hidden, hidden[::n, : layout.seq_len]


def _shared_chunk_hidden(
    body: nn.Module, input_ids: torch.Tensor, generated: torch.Tensor, layout: StridedLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scoring hidden states with the chunk computed once per chunk (``share_chunk=True``).

    Same outputs as :func:`_full_sequence_hidden`: ``gen_hidden [B*n, K, G, H]`` and ``chunk_hidden
    [B, L, H]``. Token ``(0, k)`` is predicted by chunk row ``C + k*s - 1`` (shared by the ``n`` samples);
    token ``(t >= 1, k)`` by generated token ``(t - 1, k)``, so only steps ``0 … G-2`` are fed
    (:func:`forward_block_groups`). The KV cache of the chunk keeps its autograd graph, so gradients from
    the generated tokens of all ``n`` samples reach the chunk computation.
    """
    B, n, K, G = generated.shape
    (chunk_hidden,), cache = prefill_chunk(body, input_ids)  # [B, L, H]
    H = chunk_hidden.shape[-1]
    first = chunk_hidden[:, layout.prefix_ends(input_ids.device) - 1]  # [B, K, H]
    first = first[:, None].expand(B, n, K, H).reshape(B * n, K, 1, H)
    if G == 1:
        return first, chunk_hidden
    (later,) = forward_block_groups(body, cache, generated, layout, steps=G - 1)  # [N, K, G-1, H]
    return torch.cat([first, later], dim=2), chunk_hidden
