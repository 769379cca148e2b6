"""The frozen feature network ("critic") of EBFT: layer selection, per-token normalisation, block pooling and
optional sample-space whitening (spec sections 3.1-3.7, 1.2 (a), invariants 10-12).

Math
----
A chunk ``x`` (``L`` tokens) has ``K`` blocks; block ``k`` has the nested prefix ``c_k = x[:C + k*s]``, the
ground-truth continuation ``y_k = x[C + k*s : C + k*s + G]`` and ``n`` sampled continuations ``ŷ_{i,k}``
(see :mod:`ebft.strided`). A frozen causal LM ``f`` with ``N`` layers maps every token to hidden states
``h^(0..N)`` (HF ``hidden_states``: index 0 is the embedding output, index ``N`` the final output **after** the
final norm, the others raw residual-stream states). Per token:

1. layer selection (``hidden_state_method``, spec 3.3) gives ``NF`` feature groups ``z_g`` (``NF = 1`` for
   ``concat``/``mean``-like methods, ``NF`` = number of layers for ``stack`` methods);
2. per-token L2 normalisation of every group (spec 3.4): ``z_g <- z_g / ||z_g||``; with ``answer_mask``
   (``qa_masking``) question-token features are then set to 0;
3. pooling of the ``G`` tokens of a block window (``embed_method``, spec 3.5):

   * ``last_token``: the feature of the last window token (with ``answer_mask``: the last *answer* token of
     the window; an all-zero vector if the window has none);
   * ``mean_pooling``: ``(1/G) sum_t z_t`` (not re-normalised, norm <= 1; masked tokens count as zeros);
   * ``concat``: the ``G`` token features concatenated (``G * H_g`` per group);
   * ``token``: no pooling, one feature per generated token (an extra ``G`` axis, block-major);

4. optional whitening (spec 3.6) of every (chunk, block, group) over its ``n`` samples with
   :func:`ebft.whitening.whiten` (``W = (X X^T)^{-1/2}``, samples ``-> W X``, ground truth ``-> (W 1)_i psi``);
5. the ``NF`` groups are flattened into one vector of size ``D = NF * D_g``.

Ground truth and samples come from **one** forward of ``f`` over the full strided sequences
``[x | ŷ]`` (``[B*n, S]``, :func:`ebft.strided.build_strided_sequence`) with the strided 4D additive mask and
position ids at ``generation_step = G``. The ground-truth feature ``psi_k`` pools the chunk-row states at
positions ``C + k*s + t`` (``t < G``): chunk row ``j`` sees exactly ``x[:j+1]`` with positions ``0..j``, i.e.
``c_k || y_k[:t+1]``; the sample feature ``phi_{i,k}`` pools the generated rows ``L + t*K + k``, which see
``c_k || ŷ_{i,k}[:t+1]`` with the same positions. Hence ``ŷ_{i,k} = y_k  =>  phi_{i,k} = psi_k``
(invariant 10). Chunk rows never see generated tokens, so all ``n`` replicas of a chunk give the same
``psi``; the first replica is used.

Shapes (``B`` chunks, ``n`` samples, ``K`` blocks, ``G`` tokens per block, ``D`` feature size)
------------------------------------------------------------------------------------------
* inputs: ``input_ids [B, L]``, ``generated [B, n, K, G]`` (block-major, as returned by the samplers),
  optional ``answer_mask [B, L]``;
* :class:`Features`: ``gt [B, K, D]``, ``samples [B, n, K, D]``, and with whitening
  ``whitened_samples [B, n, K, D]`` and the per-sample ``whitened_gt [B, n, K, D]``. For
  ``embed_method="token"`` every tensor has an extra ``G`` axis after ``K``.
  :meth:`Features.reward_inputs` returns them as ``[B, K, n, D]`` / ``[B, K, D]`` (or ``[B, K, n, D]``),
  the layout :mod:`ebft.rewards` expects. Features are float32 whatever the model dtype.

Which choices follow the reference and which are deliberate fixes
-----------------------------------------------------------------
Follow the reference (defaults):

* layer indices of every ``hidden_state_method`` (``concat`` = ``floor(0.25 N), floor(0.5 N), floor(0.75 N)``
  clamped to ``[1, N]``, duplicates kept; ``last_only`` = ``h^(N)`` after the final norm);
* ``normalization="joint"``: a ``concat`` feature is normalised over the whole concatenated vector
  (spec 10.3: the deepest selected layer, with the largest residual norm, dominates). This is the
  reference's behaviour and the paper's numbers were produced with it, so it stays the default;
  ``normalization="per_layer"`` (each selected layer L2-normalised first, then the joint normalisation, so
  a ``concat`` token feature is still unit-norm with every layer weighted ``1/sqrt(m)``) is the fix a
  peer port uses (without the final rescaling, which leaves it with norm ``sqrt(m)`` and mismatched
  reward geometry); ``"none"`` skips normalisation (ablations only);
* pooling, the whitening maths (spec 3.6, via :mod:`ebft.whitening`), whitening per feature group and the
  per-sample whitened ground truth;
* ``mean_pooling`` is not re-normalised (spec 10.2: then cosine alignment and dot-product diversity use
  different geometries). ``renormalize_blocks=True`` re-normalises every pooled block feature (per group)
  to unit norm before whitening, so that cos = dot and the reward is the exact CFM gradient again; off by
  default (reference behaviour);
* ``qa_masking`` as in the reference's *training* path (spec 1.2 (a)): masking after the per-token
  normalisation, ``last_token`` = last answer token, ``mean_pooling`` divides by ``G`` (masked tokens are
  zeros). Generated token ``(t, k)`` inherits the mask of ground-truth position ``C + k*s + t``.

Deliberate deviations:

* spec 10.21: the reference's standalone evaluator masks *before* normalising (0/0 = NaN) and its
  evaluators ignore the answer mask in ``last_token``; here one implementation serves training and
  evaluation, always with the training semantics above;
* spec 10.10: ``embed_method="token"`` keeps features block-major ``[..., K, G, D]``, so per-token rewards
  can no longer be mis-ordered against the step-major sequence layout;
* spec 10.24: the critic runs its base transformer only (``model.base_model``; no vocabulary logits), keeps
  only the selected hidden states (``output_hidden_states=[indices]``), and never returns full-length
  multi-layer states: only the needed token positions are gathered and pooled, micro-batch by micro-batch;
* normalisation and pooling run in float32 (the reference normalises in the model dtype, bf16, and casts
  the result to float32), so bf16 models give slightly more accurate features;
* ``share_chunk=True`` (opt-in) computes the chunk once per chunk instead of once per replica: a causal
  prefill of ``x`` (KV cache, replicated over the ``n`` samples) followed by the ``G*K`` generated tokens
  with the generated rows of the strided mask, fed in :data:`FEATURE_BLOCK_GROUPS` groups of consecutive
  blocks that each attend only the chunk positions their longest prefix can see. Same features up to float round-off
  (tested), ``B*L + B*n*G*K`` instead of ``B*n*(L + G*K)`` token positions.

The feature network is frozen: :class:`FeatureNetwork` puts the model in eval mode, sets
``requires_grad=False`` and always runs under ``torch.no_grad``; it must never be wrapped by DDP/FSDP (it
has no trainable parameters). :func:`compute_features` on a bare model runs it in eval mode and restores
the caller's ``training`` flag afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebft.strided import (
    StridedLayout,
    _block_group_inputs,
    _cache_kwarg,
    _model_dtype,
    _new_cache,
    additive_mask,
    block_groups,
    build_strided_mask_and_positions,
    build_strided_sequence,
)
from ebft.whitening import whiten as whiten_groups

__all__ = [
    "EMBED_METHODS",
    "HIDDEN_STATE_METHODS",
    "NORMALIZATIONS",
    "NORM_EPS",
    "FeatureNetwork",
    "Features",
    "LayerSelection",
    "compute_features",
    "num_hidden_layers",
    "pool_blocks",
    "resolve_hidden_state_method",
    "token_features",
    "whiten_block_features",
]

EmbedMethod = Literal["last_token", "mean_pooling", "concat", "token"]
Normalization = Literal["joint", "per_layer", "none"]
Combine = Literal["concat", "stack", "mean"]

EMBED_METHODS: tuple[str, ...] = ("last_token", "mean_pooling", "concat", "token")
"""Pooling methods of spec 3.5."""

NORMALIZATIONS: tuple[str, ...] = ("joint", "per_layer", "none")
"""Per-token normalisation modes (``joint`` = reference)."""

HIDDEN_STATE_METHODS: tuple[str, ...] = (
    "last_only",
    "mean",
    "middle",
    "middle_concat",
    "middle_stack",
    "concat",
    "stack",
    "layer_<i>",
    "concat_layers_<a>_<b>_...",
    "stack_layers_<a>_<b>_...",
)
"""Layer-selection methods of spec 3.3 (``<i>`` are indices into ``hidden_states``, 0 … N)."""

FEATURE_BLOCK_GROUPS: int = 4
"""``share_chunk`` feeds the generated tokens in this many groups of consecutive blocks (less masked attention)."""

NORM_EPS: float = 1e-12
"""Norm floor of the per-token / per-block L2 normalisation (``F.normalize``); a zero vector stays zero."""


# --------------------------------------------------------------------------------------------------------
# Layer selection (spec 3.3)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSelection:
    """Which hidden states make up a token feature, and how they are combined.

    Attributes:
        layers: indices into the HF ``hidden_states`` tuple (0 = embedding output, ``N`` = final output after
            the final norm), in feature order; duplicates are allowed (the reference's ``concat`` repeats a
            layer for models with fewer than 4 layers).
        combine: ``"concat"`` (one group, the layers concatenated along the feature axis), ``"stack"`` (one
            group per layer, normalised and whitened separately) or ``"mean"`` (one group, the mean of the
            layers).
    """

    layers: tuple[int, ...]
    combine: Combine

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("LayerSelection needs at least one layer")
        if self.combine not in ("concat", "stack", "mean"):
            raise ValueError(f"combine must be 'concat', 'stack' or 'mean', got {self.combine!r}")

    @property
    def num_groups(self) -> int:
        """``NF``: number of separately normalised / whitened feature groups."""
        return len(self.layers) if self.combine == "stack" else 1

    def group_dim(self, hidden_size: int) -> int:
        """Per-token feature size of one group for a model of width ``hidden_size``."""
        return hidden_size * len(self.layers) if self.combine == "concat" else hidden_size

    def validate(self, num_layers: int) -> LayerSelection:
        """Check every index against a model with ``num_layers`` layers (``0 <= i <= N``)."""
        bad = [i for i in self.layers if not 0 <= i <= num_layers]
        if bad:
            raise ValueError(f"layer indices {bad} out of range [0, {num_layers}] for a {num_layers}-layer model")
        return self


_INDEX_LIST = re.compile(r"^(concat|stack)_layers((?:_-?\d+)+)$")
_SINGLE = re.compile(r"^layer_(-?\d+)$")


def _layer_index(value: int, num_layers: int, method: str) -> int:
    """Python-style index into the ``N + 1`` hidden states (``-1`` = ``N``)."""
    if not -(num_layers + 1) <= value <= num_layers:
        raise ValueError(f"{method!r}: layer index {value} out of range for a {num_layers}-layer model")
    return value % (num_layers + 1)


def resolve_hidden_state_method(method: str | LayerSelection, num_layers: int) -> LayerSelection:
    """Translate a ``hidden_state_method`` (spec 3.3) into a :class:`LayerSelection` for an ``N``-layer model.

    ==================================  ============================================================
    method                              layers (indices into ``hidden_states``), combination
    ==================================  ============================================================
    ``last_only`` (reference CLI)       ``(N,)``
    ``mean``                            ``(1, …, N)``, mean
    ``middle``                          ``(N//2, N//2 + 1)``, mean
    ``middle_concat`` / ``_stack``      ``(N//2, N//2 + 1)``, concat / stack
    ``concat`` (all paper configs)      ``floor(N/4), floor(N/2), floor(3N/4)`` clamped to ``[1, N]``, concat
    ``stack``                           the same three layers, stack
    ``layer_<i>``                       ``(i,)`` (negative ``i`` counts from the end, ``-1`` = ``N``)
    ``concat_layers_<a>_<b>…``          ``(a, b, …)``, concat (``stack_layers_…``: stack)
    ==================================  ============================================================

    For Qwen2.5-1.5B (N = 28) ``concat`` is ``(7, 14, 21)``; for Llama-3.2-1B (N = 16) ``(4, 8, 12)``.
    """
    if isinstance(method, LayerSelection):
        return method.validate(num_layers)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    N = num_layers
    middle = (N // 2, min(N // 2 + 1, N))
    quartiles = tuple(min(max(i, 1), N) for i in (N // 4, N // 2, (3 * N) // 4))
    fixed: dict[str, LayerSelection] = {
        "last_only": LayerSelection((N,), "concat"),
        "mean": LayerSelection(tuple(range(1, N + 1)), "mean"),
        "middle": LayerSelection(middle, "mean"),
        "middle_concat": LayerSelection(middle, "concat"),
        "middle_stack": LayerSelection(middle, "stack"),
        "concat": LayerSelection(quartiles, "concat"),
        "stack": LayerSelection(quartiles, "stack"),
    }
    if method in fixed:
        return fixed[method]
    single = _SINGLE.match(method)
    if single:
        return LayerSelection((_layer_index(int(single.group(1)), N, method),), "concat")
    listed = _INDEX_LIST.match(method)
    if listed:
        indices = tuple(_layer_index(int(v), N, method) for v in listed.group(2).strip("_").split("_"))
        return LayerSelection(indices, listed.group(1))  # type: ignore[arg-type]
    raise ValueError(f"unknown hidden_state_method {method!r}; expected one of {', '.join(HIDDEN_STATE_METHODS)}")


def num_hidden_layers(model: nn.Module) -> int:
    """``N`` of a HF model: ``config.num_hidden_layers`` (or its ``text_config``), else ``len(layers)``."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        value = getattr(cfg, "num_hidden_layers", None)
        if isinstance(value, int) and value > 0:
            return value
    layers = getattr(_backbone(model), "layers", None)
    if layers is not None:
        return len(layers)
    raise ValueError("cannot determine the number of layers of the feature model")


# --------------------------------------------------------------------------------------------------------
# Per-token features and pooling (spec 3.4, 3.5)
# --------------------------------------------------------------------------------------------------------


def token_features(
    hidden_states: Sequence[Tensor | None],
    selection: LayerSelection,
    *,
    normalization: Normalization = "joint",
) -> Tensor:
    """Per-token features from a model's ``hidden_states`` (spec 3.3-3.4).

    Args:
        hidden_states: the HF tuple (``N + 1`` entries, each ``[..., H]``; unselected entries may be ``None``)
            or any sequence indexable by ``selection.layers``. Positions may already be gathered.
        selection: see :func:`resolve_hidden_state_method`.
        normalization: ``"joint"`` (reference: each group divided by its L2 norm), ``"per_layer"`` (every
            selected layer L2-normalised, then the joint normalisation) or ``"none"``.

    Returns:
        float32 ``[..., NF, D_g]``; with ``"joint"``/``"per_layer"`` every group has unit L2 norm.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    parts = []
    for index in selection.layers:
        h = hidden_states[index]
        if h is None:
            raise ValueError(f"hidden state {index} was not computed")
        h = h.float()
        if normalization == "per_layer":
            h = F.normalize(h, dim=-1, eps=NORM_EPS)
        parts.append(h)
    if selection.combine == "concat":
        feats = torch.cat(parts, dim=-1).unsqueeze(-2)
    elif selection.combine == "stack":
        feats = torch.stack(parts, dim=-2)
    else:
        feats = torch.stack(parts, dim=0).mean(dim=0).unsqueeze(-2)
    if normalization != "none":
        feats = F.normalize(feats, dim=-1, eps=NORM_EPS)
    return feats


def _check_embed_method(embed_method: str) -> None:
    if embed_method not in EMBED_METHODS:
        raise ValueError(f"embed_method must be one of {EMBED_METHODS}, got {embed_method!r}")


def pool_blocks(
    feats: Tensor,
    embed_method: EmbedMethod,
    window_mask: Tensor | None = None,
    *,
    renormalize: bool = False,
) -> Tensor:
    """Pool the ``G`` token features of every block window into one vector per group (spec 3.5).

    Args:
        feats: per-token features ``[..., K, G, NF, D_g]`` (block-major windows).
        embed_method: ``last_token`` | ``mean_pooling`` | ``concat`` | ``token``.
        window_mask: optional answer mask ``[..., K, G]`` (broadcastable; 1 = answer token). Masked tokens
            are zeroed, ``last_token`` takes the last answer token of the window (zero vector if none),
            ``mean_pooling`` still divides by ``G``.
        renormalize: L2-normalise every pooled vector (per group) afterwards (off in the reference).

    Returns:
        ``[..., K, NF, D_g]`` (``concat``: ``D_g * G``); ``token``: ``[..., K, G, NF, D_g]``.
    """
    _check_embed_method(embed_method)
    if feats.dim() < 4:
        raise ValueError(f"feats must be [..., K, G, NF, D], got {tuple(feats.shape)}")
    G = feats.shape[-3]
    if window_mask is not None:
        keep = window_mask.to(device=feats.device, dtype=torch.bool)
        feats = feats * keep[..., None, None].to(feats.dtype)
    if embed_method == "last_token":
        if window_mask is None:
            pooled = feats[..., G - 1, :, :]
        else:
            # index of the last answer token in each window; windows without one give index 0, whose (masked)
            # feature is zero, and are zeroed explicitly anyway
            steps = torch.arange(1, G + 1, device=feats.device)
            last = (keep.long() * steps).argmax(dim=-1)  # [..., K]
            last = last.expand(feats.shape[:-3])
            index = last[..., None, None, None].expand(*feats.shape[:-3], 1, *feats.shape[-2:])
            pooled = feats.gather(-3, index).squeeze(-3)
            has_answer = keep.any(dim=-1).expand(feats.shape[:-3])
            pooled = pooled * has_answer[..., None, None].to(pooled.dtype)
    elif embed_method == "mean_pooling":
        pooled = feats.mean(dim=-3)
    elif embed_method == "concat":
        pooled = feats.movedim(-3, -2).flatten(-2)  # [..., K, NF, G*D_g], token-major within a group
    else:
        pooled = feats
    if renormalize:
        pooled = F.normalize(pooled, dim=-1, eps=NORM_EPS)
    return pooled


def whiten_block_features(samples: Tensor, gt: Tensor, **whiten_kwargs: object) -> tuple[Tensor, Tensor]:
    """Sample-space whitening of every (chunk, block[, token], group) over its ``n`` samples (spec 3.6).

    Args:
        samples: ``[B, n, *blocks, NF, D_g]``.
        gt: ``[B, *blocks, NF, D_g]``.
        whiten_kwargs: forwarded to :func:`ebft.whitening.whiten` (``rel_cutoff``, ``eps``, ``compute_dtype``).

    Returns:
        whitened samples ``[B, n, *blocks, NF, D_g]`` and per-sample whitened ground truth of the same shape
        (row ``i`` of a group is ``(W 1)_i * psi``).
    """
    x = samples.movedim(1, -2)  # [B, *blocks, NF, n, D_g]
    result = whiten_groups(x, gt, **whiten_kwargs)  # type: ignore[arg-type]
    assert result.gt is not None
    return result.samples.movedim(-2, 1), result.gt.movedim(-2, 1)


# --------------------------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Pooled block features of a batch of chunks and their samples (float32, no grad).

    Attributes:
        gt: ground-truth features psi, ``[B, K, D]`` (``token``: ``[B, K, G, D]``).
        samples: sample features phi, ``[B, n, K, D]`` (``token``: ``[B, n, K, G, D]``).
        whitened_samples: ``W X`` per (chunk, block, group), ``[B, n, K, D]``, or ``None`` without whitening.
        whitened_gt: per-sample whitened ground truth ``(W 1)_i psi``, ``[B, n, K, D]``, or ``None``.
        layout: the strided geometry.
        num_groups: ``NF``; ``D = NF * D_g`` with group ``g`` at ``[g*D_g, (g+1)*D_g)``.
        embed_method: the pooling used.
    """

    gt: Tensor
    samples: Tensor
    whitened_samples: Tensor | None
    whitened_gt: Tensor | None
    layout: StridedLayout
    num_groups: int
    embed_method: str

    @property
    def whitened(self) -> bool:
        return self.whitened_samples is not None

    def reward_inputs(self, whitened: bool | None = None) -> tuple[Tensor, Tensor]:
        """``(phi, psi)`` in the layout of :mod:`ebft.rewards`: samples ``[B, K, n, D]``, ground truth
        ``[B, K, D]`` (unwhitened, shared) or ``[B, K, n, D]`` (whitened, per sample). ``token``: an extra ``G``
        axis after ``K``.

        Args:
            whitened: use the whitened features (default: whenever they were computed).
        """
        use_whitened = self.whitened if whitened is None else whitened
        if use_whitened:
            if self.whitened_samples is None or self.whitened_gt is None:
                raise ValueError("whitened features were not computed (whiten=False)")
            return self.whitened_samples.movedim(1, -2), self.whitened_gt.movedim(1, -2)
        return self.samples.movedim(1, -2), self.gt


# --------------------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------------------


def _backbone(model: nn.Module) -> nn.Module:
    """The base transformer (``model.base_model``: ``model.model`` for a causal LM, the model itself for an
    ``AutoModel``), so that no vocabulary logits are computed."""
    return getattr(model, "base_model", model)


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return default if param is None else param.device


def _hidden_states(backbone: nn.Module, layers: Sequence[int], **kwargs: object) -> Sequence[Tensor | None]:
    """Forward of the base transformer keeping only ``layers`` of ``hidden_states`` (HF >= 5.24 accepts a list
    of indices; older versions return them all, which indexes the same way)."""
    out = backbone(output_hidden_states=sorted(set(layers)), **kwargs)
    hidden = out.hidden_states
    if hidden is None or any(i >= len(hidden) or hidden[i] is None for i in layers):
        raise RuntimeError(f"the feature model did not return hidden states {sorted(set(layers))}")
    return hidden


def _gather(hidden: Sequence[Tensor | None], layers: Sequence[int], rows: Tensor | None, cols: Tensor) -> list:
    """``hidden[i][rows][:, cols]`` for every selected layer, as a list indexable by layer index."""
    picked: list[Tensor | None] = [None] * (max(layers) + 1)
    for i in set(layers):
        h = hidden[i]
        assert h is not None
        if rows is not None:
            h = h.index_select(0, rows)
        picked[i] = h.index_select(1, cols)
    return picked


@dataclass(frozen=True)
class _Settings:
    selection: LayerSelection
    embed_method: EmbedMethod
    normalization: Normalization
    renormalize_blocks: bool


def _pooled(
    hidden: Sequence[Tensor | None],
    rows: Tensor | None,
    cols: Tensor,
    window_mask: Tensor | None,
    layout: StridedLayout,
    settings: _Settings,
) -> Tensor:
    """Gather token positions ``cols`` (block-major ``K*G``) of ``rows``, build features and pool them."""
    K, G = layout.num_blocks, layout.gen_len
    picked = _gather(hidden, settings.selection.layers, rows, cols)
    feats = token_features(picked, settings.selection, normalization=settings.normalization)  # [R, K*G, NF, D]
    feats = feats.unflatten(1, (K, G))
    return pool_blocks(feats, settings.embed_method, window_mask, renormalize=settings.renormalize_blocks)


def _full_pass(
    backbone: nn.Module,
    sequences: Tensor,
    chunk_rows: Tensor,
    mask: Tensor,
    positions: Tensor,
    windows: tuple[Tensor, Tensor],
    window_mask: tuple[Tensor | None, Tensor | None],
    layout: StridedLayout,
    settings: _Settings,
) -> tuple[Tensor, Tensor]:
    """One strided forward over ``sequences [R, S]``: pooled sample features of every row and ground-truth
    features of the rows ``chunk_rows`` (local indices of first replicas)."""
    R = sequences.shape[0]
    hidden = _hidden_states(
        backbone,
        settings.selection.layers,
        input_ids=sequences,
        attention_mask=mask,
        position_ids=positions.expand(R, -1),
        use_cache=False,
    )
    gt_cols, gen_cols = windows
    gt_mask, gen_mask = window_mask
    samples = _pooled(hidden, None, gen_cols, gen_mask, layout, settings)
    gt = _pooled(hidden, chunk_rows, gt_cols, gt_mask, layout, settings) if chunk_rows.numel() else None
    return gt, samples


def _shared_chunk_pass(
    backbone: nn.Module,
    chunks: Tensor,
    generated: Tensor,
    windows: tuple[Tensor, Tensor],
    window_mask: tuple[Tensor | None, Tensor | None],
    layout: StridedLayout,
    settings: _Settings,
) -> tuple[Tensor, Tensor]:
    """Chunk computed once: causal prefill of ``chunks [b, L]`` (ground truth + KV cache), cache replicated
    over the ``n`` samples, then the ``G*K`` generated tokens of ``generated [b, n, K, G]`` in groups of
    consecutive blocks (:data:`FEATURE_BLOCK_GROUPS` forwards)."""
    b, n, K, G = generated.shape
    cache = _new_cache(backbone)
    cache_kw = _cache_kwarg(backbone)
    hidden = _hidden_states(backbone, settings.selection.layers, input_ids=chunks, use_cache=True, **{cache_kw: cache})
    gt_cols, gen_cols = windows
    gt_mask, gen_mask = window_mask
    gt = _pooled(hidden, None, gt_cols, gt_mask, layout, settings)
    del hidden
    # generated tokens in groups of consecutive blocks, each against only the chunk keys its longest prefix
    # can see (see ebft.strided._block_group_inputs); the outputs are put back in step-major order t*K + k
    prefix_layers = [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[attr-defined]
    del cache
    layers = sorted(set(settings.selection.layers))
    parts: dict[int, list[Tensor]] = {i: [] for i in layers}
    dtype = _model_dtype(backbone)
    for k0, k1 in block_groups(K, FEATURE_BLOCK_GROUPS):
        Kg = k1 - k0
        group_cache, allowed, positions = _block_group_inputs(backbone, prefix_layers, layout, k0, k1, G, n)
        tokens = generated[:, :, k0:k1].reshape(b * n, Kg, G).transpose(1, 2).reshape(b * n, G * Kg)
        hidden = _hidden_states(
            backbone,
            layers,
            input_ids=tokens.to(chunks.dtype),
            attention_mask=additive_mask(allowed, dtype)[None, None],
            position_ids=positions[None].expand(b * n, -1),
            use_cache=True,
            **{cache_kw: group_cache},
        )
        for i in layers:
            parts[i].append(hidden[i].unflatten(1, (G, Kg)))  # [b*n, G, Kg, H]
        del hidden, group_cache
    full: list[Tensor | None] = [None] * (max(layers) + 1)
    for i in layers:
        full[i] = torch.cat(parts[i], dim=2).flatten(1, 2)  # [b*n, G*K, H], index t*K + k
    samples = _pooled(full, None, gen_cols - layout.seq_len, gen_mask, layout, settings)
    return gt, samples


def _resolve_layout(
    input_ids: Tensor,
    generated: Tensor,
    layout: StridedLayout | None,
    context_len: int | None,
    stride: int | None,
) -> StridedLayout:
    if input_ids.dim() != 2 or generated.dim() != 4 or generated.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"expected input_ids [B, L] and generated [B, n, K, G], got {tuple(input_ids.shape)} and "
            f"{tuple(generated.shape)}"
        )
    L, G = input_ids.shape[1], generated.shape[-1]
    if layout is None:
        if context_len is None or stride is None:
            raise ValueError("give either layout or both context_len and stride")
        layout = StridedLayout(L, context_len, stride, G)
    elif context_len is not None or stride is not None:
        raise ValueError("give either layout or (context_len, stride), not both")
    if layout.seq_len != L or layout.gen_len != G or layout.num_blocks != generated.shape[2]:
        raise ValueError(
            f"layout {layout} (K={layout.num_blocks}) does not match input_ids {tuple(input_ids.shape)} and "
            f"generated {tuple(generated.shape)}"
        )
    return layout


def compute_features(
    feature_model: nn.Module,
    input_ids: Tensor,
    generated: Tensor,
    *,
    layout: StridedLayout | None = None,
    context_len: int | None = None,
    stride: int | None = None,
    hidden_state_method: str | LayerSelection = "concat",
    embed_method: EmbedMethod = "last_token",
    whiten: bool = False,
    micro_batch_size: int | None = None,
    answer_mask: Tensor | None = None,
    normalization: Normalization = "joint",
    renormalize_blocks: bool = False,
    share_chunk: bool = False,
    whiten_kwargs: dict | None = None,
) -> Features:
    """Ground-truth and sample features of strided rollouts with the frozen feature network (spec 3).

    Args:
        feature_model: a HF causal LM (its ``base_model`` is run, so no logits are computed), a base
            ``AutoModel``, or a :class:`FeatureNetwork` (whose settings are then *not* used: the keyword
            arguments here apply). Run in eval mode under ``torch.no_grad``; the caller's ``training`` flag is
            restored afterwards. Must accept 4D additive masks (eager / sdpa attention, not FlashAttention-2).
        input_ids: ``LongTensor[B, L]`` chunks.
        generated: ``LongTensor[B, n, K, G]`` block-major samples.
        layout: the strided geometry, or give ``context_len`` and ``stride`` (``L``, ``G`` are read from the
            inputs).
        hidden_state_method: see :func:`resolve_hidden_state_method` (default ``concat``, all paper configs).
        embed_method: ``last_token`` (default; code configs) | ``mean_pooling`` (translation) | ``concat`` |
            ``token``.
        whiten: also return sample-space whitened features (spec 3.6).
        micro_batch_size: sequences (rows of the ``[B*n, S]`` batch) per forward; ``None`` = all at once. With
            ``share_chunk`` the forward holds ``max(1, micro_batch_size // n)`` whole chunks.
        answer_mask: optional ``[B, L]`` answer mask (``qa_masking``, spec 1.2 (a)): question-token features are
            zeroed after normalisation and ``last_token`` pools the last answer token of each window.
        normalization: ``joint`` (reference) | ``per_layer`` | ``none`` (see :func:`token_features`).
        renormalize_blocks: L2-normalise pooled block features (per group) before whitening.
        share_chunk: compute each chunk once (KV-cached prefill) instead of once per replica.
        whiten_kwargs: extra arguments of :func:`ebft.whitening.whiten`.

    Returns:
        :class:`Features` (``gt [B, K, D]``, ``samples [B, n, K, D]``, whitened ``[B, n, K, D]`` or ``None``).
    """
    _check_embed_method(embed_method)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
    model = feature_model.model if isinstance(feature_model, FeatureNetwork) else feature_model
    layout = _resolve_layout(input_ids, generated, layout, context_len, stride)
    B, n, K, G = generated.shape
    L = layout.seq_len
    if answer_mask is not None and tuple(answer_mask.shape) != (B, L):
        raise ValueError(f"answer_mask must be [B, L] = {(B, L)}, got {tuple(answer_mask.shape)}")
    selection = resolve_hidden_state_method(hidden_state_method, num_hidden_layers(model))
    settings = _Settings(selection, embed_method, normalization, renormalize_blocks)
    backbone = _backbone(model)
    device = _model_device(model, input_ids.device)
    input_ids = input_ids.to(device)
    generated = generated.to(device)

    gt_cols = layout.target_positions(device).reshape(-1)  # [K*G] block-major, chunk index C + k*s + t
    gen_cols = layout.generated_slots(device).reshape(-1)  # [K*G] block-major, L + t*K + k
    windows = (gt_cols, gen_cols)
    # answer mask of every window position; generated (t, k) inherits the mask of C + k*s + t
    win_mask = None if answer_mask is None else answer_mask.to(device).bool()[:, gt_cols].reshape(B, K, G)

    gts: list[Tensor] = []
    samples: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dtype = _model_dtype(model)
            if share_chunk:
                chunks_per_pass = B if micro_batch_size is None else max(1, micro_batch_size // n)
                for b0 in range(0, B, chunks_per_pass):
                    b1 = min(B, b0 + chunks_per_pass)
                    wm = None if win_mask is None else win_mask[b0:b1]
                    wm_rows = None if wm is None else wm.repeat_interleave(n, dim=0)
                    gt, smp = _shared_chunk_pass(
                        backbone,
                        input_ids[b0:b1],
                        generated[b0:b1],
                        windows,
                        (wm, wm_rows),
                        layout,
                        settings,
                    )
                    gts.append(gt)
                    samples.append(smp)
            else:
                sequences = build_strided_sequence(input_ids, generated)  # [B*n, S]
                mask, positions = build_strided_mask_and_positions(layout, G, dtype=dtype, device=device)
                step = B * n if micro_batch_size is None else micro_batch_size
                for r0 in range(0, B * n, step):
                    r1 = min(B * n, r0 + step)
                    global_rows = torch.arange(r0, r1, device=device)
                    first = global_rows[global_rows % n == 0]
                    wm_gt = None if win_mask is None else win_mask[first // n]
                    wm_rows = None if win_mask is None else win_mask[global_rows // n]
                    gt, smp = _full_pass(
                        backbone,
                        sequences[r0:r1],
                        first - r0,
                        mask,
                        positions,
                        windows,
                        (wm_gt, wm_rows),
                        layout,
                        settings,
                    )
                    if gt is not None:
                        gts.append(gt)
                    samples.append(smp)
    finally:
        model.train(was_training)

    gt_all = torch.cat(gts, dim=0)  # [B, K, (G,) NF, D_g]
    sample_all = torch.cat(samples, dim=0)
    sample_all = sample_all.reshape(B, n, *sample_all.shape[1:])  # [B, n, K, (G,) NF, D_g]
    whitened_samples = whitened_gt = None
    if whiten:
        ws, wg = whiten_block_features(sample_all, gt_all, **(whiten_kwargs or {}))
        whitened_samples, whitened_gt = ws.flatten(-2), wg.flatten(-2)
    return Features(
        gt=gt_all.flatten(-2),
        samples=sample_all.flatten(-2),
        whitened_samples=whitened_samples,
        whitened_gt=whitened_gt,
        layout=layout,
        num_groups=selection.num_groups,
        embed_method=embed_method,
    )


# --------------------------------------------------------------------------------------------------------
# Module wrapper
# --------------------------------------------------------------------------------------------------------


class FeatureNetwork(nn.Module):
    """Frozen feature network phi (spec 3.1): a HF causal LM (or base model) plus the feature settings.

    On construction the model is put in eval mode and every parameter gets ``requires_grad=False``;
    :meth:`train` keeps it in eval mode, so a parent ``.train()`` call cannot switch dropout on. It has no
    trainable parameters: never wrap it in DDP/FSDP or hand it to an optimiser.

    Args:
        model: the frozen critic (the paper uses the *base* model, even when the policy is warm-started).
        hidden_state_method, embed_method, normalization, renormalize_blocks, whiten, micro_batch_size,
        share_chunk, whiten_kwargs: defaults for :meth:`forward`; see :func:`compute_features`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        hidden_state_method: str | LayerSelection = "concat",
        embed_method: EmbedMethod = "last_token",
        normalization: Normalization = "joint",
        renormalize_blocks: bool = False,
        whiten: bool = False,
        micro_batch_size: int | None = None,
        share_chunk: bool = False,
        whiten_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        _check_embed_method(embed_method)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.selection = resolve_hidden_state_method(hidden_state_method, num_hidden_layers(model))
        self.embed_method: EmbedMethod = embed_method
        self.normalization: Normalization = normalization
        self.renormalize_blocks = renormalize_blocks
        self.whiten = whiten
        self.micro_batch_size = micro_batch_size
        self.share_chunk = share_chunk
        self.whiten_kwargs = dict(whiten_kwargs or {})
        super().train(False)

    def train(self, mode: bool = True) -> FeatureNetwork:
        """Ignore ``mode``: the feature network always stays in eval mode."""
        return super().train(False)

    def forward(
        self,
        input_ids: Tensor,
        generated: Tensor,
        *,
        layout: StridedLayout | None = None,
        context_len: int | None = None,
        stride: int | None = None,
        answer_mask: Tensor | None = None,
        whiten: bool | None = None,
    ) -> Features:
        """Features of ``input_ids [B, L]`` and ``generated [B, n, K, G]`` (see :func:`compute_features`)."""
        return compute_features(
            self.model,
            input_ids,
            generated,
            layout=layout,
            context_len=context_len,
            stride=stride,
            hidden_state_method=self.selection,
            embed_method=self.embed_method,
            whiten=self.whiten if whiten is None else whiten,
            micro_batch_size=self.micro_batch_size,
            answer_mask=answer_mask,
            normalization=self.normalization,
            renormalize_blocks=self.renormalize_blocks,
            share_chunk=self.share_chunk,
            whiten_kwargs=self.whiten_kwargs,
        )
