"""The frozen feature network ("critic") of EBFT: layer selection, per-token normalisation, block pooling and
optional sample-space whitening (docs/algorithm.md §3-4; the properties tested: §8, I7-I10).

Math
----
A chunk ``x`` (``L`` tokens) has ``K`` blocks; block ``k`` has the nested prefix ``c_k = x[:C + k*s]``, the
ground-truth continuation ``y_k = x[C + k*s : C + k*s + G]`` and ``n`` sampled continuations ``ŷ_{i,k}``
(see :mod:`ebft.strided`). A frozen causal LM ``f`` with ``N`` layers maps every token to hidden states
``h^(0..N)`` (HF ``hidden_states``: index 0 is the embedding output, index ``N`` the final output **after** the
final norm, the others raw residual-stream states). Per token:

1. layer selection (``hidden_state_method``, docs/algorithm.md §3.3) gives ``NF`` feature groups ``z_g`` (``NF = 1`` for
   ``concat``/``mean``-like methods, ``NF`` = number of layers for ``stack`` methods);
2. per-token L2 normalisation of every group (§3.4): ``z_g <- z_g / ||z_g||``; with ``answer_mask``
   (answer masking, §3.6) question-token features are then set to 0;
3. pooling of the ``G`` tokens of a block window (``embed_method``, §3.5):

   * ``last_token``: the feature of the last window token (with ``answer_mask``: the last *answer* token of
     the window; an all-zero vector if the window has none);
   * ``mean_pooling``: ``(1/G) sum_t z_t`` (not re-normalised, norm <= 1; masked tokens count as zeros);
   * ``concat``: the ``G`` token features concatenated (``G * H_g`` per group);
   * ``token``: no pooling, one feature per generated token (an extra ``G`` axis, block-major);

4. optional whitening (§4) of every (chunk, block, group) over its ``n`` samples with
   :func:`ebft.whitening.whiten` (``W = (X X^T)^{-1/2}``, samples ``-> W X``, ground truth ``-> (W 1)_i psi``);
5. the ``NF`` groups are flattened into one vector of size ``D = NF * D_g``.

Ground truth and samples come from **one** forward of ``f`` over the full strided sequences
``[x | ŷ]`` (``[B*n, S]``, :func:`ebft.strided.build_strided_sequence`) with the strided 4D additive mask and
position ids at ``generation_step = G``. The ground-truth feature ``psi_k`` pools the chunk-row states at
positions ``C + k*s + t`` (``t < G``): chunk row ``j`` sees exactly ``x[:j+1]`` with positions ``0..j``, i.e.
``c_k || y_k[:t+1]``; the sample feature ``phi_{i,k}`` pools the generated rows ``L + t*K + k``, which see
``c_k || ŷ_{i,k}[:t+1]`` with the same positions. Hence ``ŷ_{i,k} = y_k  =>  phi_{i,k} = psi_k``
(§8, I8). Chunk rows never see generated tokens, so all ``n`` replicas of a chunk give the same
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
  (§3.4: the deepest selected layer, with the largest residual norm, dominates). This is the
  reference's behaviour and the paper's numbers were produced with it, so it stays the default;
  ``normalization="per_layer"`` (each selected layer L2-normalised first, then the joint normalisation, so
  a ``concat`` token feature is still unit-norm with every layer weighted ``1/sqrt(m)``) is the fix a
  peer port uses (without the final rescaling, which leaves it with norm ``sqrt(m)`` and mismatched
  reward geometry); ``"none"`` skips normalisation (ablations only);
* pooling, the whitening maths (§4, via :mod:`ebft.whitening`), whitening per feature group and the
  per-sample whitened ground truth;
* ``mean_pooling`` is not re-normalised (§5.1: then cosine alignment and dot-product diversity use
  different geometries). ``renormalize_blocks=True`` re-normalises every pooled block feature (per group)
  to unit norm before whitening, so that cos = dot and the reward is the exact CFM gradient again; off by
  default (reference behaviour);
* answer masking as in the reference's *training* path (§3.6): masking after the per-token
  normalisation, ``last_token`` = last answer token, ``mean_pooling`` divides by ``G`` (masked tokens are
  zeros). Generated token ``(t, k)`` inherits the mask of ground-truth position ``C + k*s + t``.

Deliberate deviations:

* answer masking (§9): the reference's standalone evaluator masks *before* normalising (0/0 = NaN) and its
  evaluators ignore the answer mask in ``last_token``; here one implementation serves training and
  evaluation, always with the training semantics above;
* ``token`` pooling (§9): ``embed_method="token"`` keeps features block-major ``[..., K, G, D]``, so per-token rewards
  can no longer be mis-ordered against the step-major sequence layout;
* cost (§9): the critic runs its base transformer only (``model.base_model``; no vocabulary logits), keeps
  only the selected hidden states (``output_hidden_states=[indices]``), and never returns full-length
  multi-layer states: only the needed token positions are gathered and pooled, micro-batch by micro-batch;
* normalisation and pooling run in float32 (the reference normalises in the model dtype, bf16, and casts
  the result to float32), so bf16 models give slightly more accurate features;
* ``share_chunk=True`` (opt-in) computes the chunk once per chunk instead of once per replica: a causal
  prefill of ``x`` (:func:`ebft.strided.prefill_chunk`, ground-truth features and a KV cache) followed by
  the ``G*K`` generated tokens of every sample against that cache
  (:func:`ebft.strided.forward_block_groups`: the generated rows of the strided mask, in groups of
  consecutive blocks that each attend only the chunk positions their longest prefix can see). Same features
  up to float round-off (tested), ``B*L + B*n*G*K`` instead of ``B*n*(L + G*K)`` token positions.

The feature network is frozen: :class:`FeatureNetwork` puts the model in eval mode, sets
``requires_grad=False`` and always runs under ``torch.no_grad``; it must never be wrapped by DDP/FSDP (it
has no trainable parameters). :func:`compute_features` on a bare model runs it in eval mode and restores
the caller's ``training`` flag afterwards. The settings of a feature computation (layer selection, pooling,
normalisation, whitening, batching) are one :class:`FeatureConfig`, held by :class:`FeatureNetwork`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebft.modeling import backbone, model_device, model_dtype
from ebft.strided import (
    RunBody,
    StridedLayout,
    build_strided_mask_and_positions,
    build_strided_sequence,
    forward_block_groups,
    prefill_chunk,
    resolve_layout,
)
from ebft.whitening import whiten as whiten_groups

__all__ = [
    "EMBED_METHODS",
    "HIDDEN_STATE_METHODS",
    "NORMALIZATIONS",
    "NORM_EPS",
    "FeatureConfig",
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
"""Pooling methods (docs/algorithm.md §3.5)."""

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
"""Layer-selection methods (docs/algorithm.md §3.3; ``<i>`` are indices into ``hidden_states``, 0 … N)."""

NORM_EPS: float = 1e-12
"""Norm floor of the per-token / per-block L2 normalisation (``F.normalize``); a zero vector stays zero."""


# --------------------------------------------------------------------------------------------------------
# Layer selection (docs/algorithm.md §3.3)
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
    """Translate a ``hidden_state_method`` into a :class:`LayerSelection` for an ``N``-layer model
    (docs/algorithm.md §3.3).

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
    layers = getattr(backbone(model), "layers", None)
    if layers is not None:
        return len(layers)
    raise ValueError("cannot determine the number of layers of the feature model")


# --------------------------------------------------------------------------------------------------------
# Per-token features and pooling (docs/algorithm.md §3.4, §3.5)
# --------------------------------------------------------------------------------------------------------


def token_features(
    hidden_states: Sequence[Tensor | None],
    selection: LayerSelection,
    *,
    normalization: Normalization = "joint",
) -> Tensor:
    """Per-token features from a model's ``hidden_states`` (docs/algorithm.md §3.3-3.4).

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
    """Pool the ``G`` token features of every block window into one vector per group (docs/algorithm.md §3.5).

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
    """Sample-space whitening of every (chunk, block[, token], group) over its ``n`` samples (docs/algorithm.md §4).

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
# Settings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of a feature computation (held by :class:`FeatureNetwork`, taken by :func:`compute_features`).

    Attributes:
        hidden_state_method: layer selection, see :func:`resolve_hidden_state_method` (default ``concat``,
            all paper configs); resolved against the model's layer count at use.
        embed_method: block pooling: ``last_token`` (default; code configs) | ``mean_pooling`` (translation) |
            ``concat`` | ``token`` (see :func:`pool_blocks`).
        normalization: per-token normalisation: ``joint`` (reference) | ``per_layer`` | ``none`` (see
            :func:`token_features`).
        renormalize_blocks: L2-normalise pooled block features (per group) before whitening.
        whiten: also return sample-space whitened features (:func:`whiten_block_features`).
        micro_batch_size: sequences (rows of the ``[B*n, S]`` batch) per forward; ``None`` = all at once. With
            ``share_chunk`` a forward holds ``max(1, micro_batch_size // n)`` whole chunks.
        share_chunk: compute each chunk once (KV-cached prefill) instead of once per replica.
        whiten_kwargs: extra arguments of :func:`ebft.whitening.whiten` (``rel_cutoff``, ``eps``,
            ``compute_dtype``); copied on construction.

    Raises:
        ValueError: for an unknown ``embed_method`` or ``normalization`` or a ``micro_batch_size < 1``.
    """

    hidden_state_method: str | LayerSelection = "concat"
    embed_method: EmbedMethod = "last_token"
    normalization: Normalization = "joint"
    renormalize_blocks: bool = False
    whiten: bool = False
    micro_batch_size: int | None = None
    share_chunk: bool = False
    whiten_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_embed_method(self.embed_method)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {self.micro_batch_size}")
        object.__setattr__(self, "whiten_kwargs", dict(self.whiten_kwargs or {}))

    def with_overrides(self, **overrides: Any) -> FeatureConfig:
        """A copy with the given fields replaced (``self`` when there are none)."""
        return replace(self, **overrides) if overrides else self


# --------------------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What every forward pass of one :func:`compute_features` call shares.

    ``gt_cols [K*G]``: chunk index ``C + k*s + t`` of every window token, block-major;
    ``window_mask [B, K, G]``: the answer mask of those positions (``None`` without ``answer_mask``).
    """

    config: FeatureConfig
    selection: LayerSelection
    layout: StridedLayout
    gt_cols: Tensor
    window_mask: Tensor | None

    @property
    def layers(self) -> list[int]:
        """The distinct hidden-state indices to compute, ascending."""
        return sorted(set(self.selection.layers))

    def run(self, body: nn.Module) -> RunBody:
        """Forward of the transformer ``body`` returning the selected hidden states (in :attr:`layers` order).

        HF >= 5.24 accepts a list of indices for ``output_hidden_states``; older versions return them all,
        which indexes the same way.
        """

        def run(**kwargs: object) -> list[Tensor]:
            hidden = body(output_hidden_states=self.layers, **kwargs).hidden_states
            if hidden is None or any(i >= len(hidden) or hidden[i] is None for i in self.layers):
                raise RuntimeError(f"the feature model did not return hidden states {self.layers}")
            return [hidden[i] for i in self.layers]

        return run

    def mask_of(self, chunks: Tensor | slice, repeat: int = 1) -> Tensor | None:
        """Window mask ``[R, K, G]`` of the chunks ``chunks`` (indices or a slice), each row repeated
        ``repeat`` times (``n`` for the sample rows of those chunks); ``None`` without an answer mask."""
        if self.window_mask is None:
            return None
        mask = self.window_mask[chunks]
        return mask.repeat_interleave(repeat, dim=0) if repeat > 1 else mask

    def pool(self, states: Sequence[Tensor], window_mask: Tensor | None) -> Tensor:
        """Features of the window tokens: ``states`` (in :attr:`layers` order) each ``[R, K*G, H]``
        (block-major) -> pooled ``[R, K, NF, D_g]`` (``token``: ``[R, K, G, NF, D_g]``)."""
        by_layer: list[Tensor | None] = [None] * (max(self.layers) + 1)
        for i, h in zip(self.layers, states, strict=True):
            by_layer[i] = h
        feats = token_features(by_layer, self.selection, normalization=self.config.normalization)
        feats = feats.unflatten(1, (self.layout.num_blocks, self.layout.gen_len))  # [R, K, G, NF, D_g]
        return pool_blocks(
            feats, self.config.embed_method, window_mask, renormalize=self.config.renormalize_blocks
        )


def _full_sequence_pass(
    body: nn.Module, input_ids: Tensor, generated: Tensor, plan: _Plan
) -> tuple[list[Tensor], list[Tensor]]:
    """Every replica of a chunk computed in full: strided forwards over ``[x | ŷ]`` (``[B*n, S]``),
    ``micro_batch_size`` rows at a time.

    Sample features pool the generated rows ``L + t*K + k`` of every row; ground-truth features pool the chunk
    rows ``C + k*s + t`` of the first replica of each chunk. Returns the per-micro-batch pieces of
    ``gt [B, K, ...]`` and ``samples [B*n, K, ...]``.
    """
    B, n = generated.shape[:2]
    device = input_ids.device
    layout = plan.layout
    gen_cols = layout.generated_slots(device).reshape(-1)  # [K*G] block-major, L + t*K + k
    sequences = build_strided_sequence(input_ids, generated)  # [B*n, S]
    mask, positions = build_strided_mask_and_positions(layout, layout.gen_len, dtype=model_dtype(body), device=device)
    step = B * n if plan.config.micro_batch_size is None else plan.config.micro_batch_size
    run = plan.run(body)
    gts: list[Tensor] = []
    samples: list[Tensor] = []
    for r0 in range(0, B * n, step):
        r1 = min(B * n, r0 + step)
        rows = torch.arange(r0, r1, device=device)
        first = rows[rows % n == 0]  # first replicas, global row indices
        hidden = run(
            input_ids=sequences[r0:r1], attention_mask=mask, position_ids=positions.expand(r1 - r0, -1),
            use_cache=False,
        )  # each [R, S, H]
        samples.append(plan.pool([h.index_select(1, gen_cols) for h in hidden], plan.mask_of(rows // n)))
        if first.numel():
            gt_states = [h.index_select(0, first - r0).index_select(1, plan.gt_cols) for h in hidden]
            gts.append(plan.pool(gt_states, plan.mask_of(first // n)))
    return gts, samples


def _shared_chunk_pass(
    body: nn.Module, input_ids: Tensor, generated: Tensor, plan: _Plan
) -> tuple[list[Tensor], list[Tensor]]:
    """Each chunk computed once: :func:`ebft.strided.prefill_chunk` over ``x`` (ground-truth features and a
    KV cache), then the ``G*K`` generated tokens of its ``n`` samples against that cache
    (:func:`ebft.strided.forward_block_groups`), ``max(1, micro_batch_size // n)`` chunks at a time.

    Returns the per-pass pieces of ``gt [B, K, ...]`` and ``samples [B*n, K, ...]``.
    """
    B, n = generated.shape[:2]
    chunks_per_pass = B if plan.config.micro_batch_size is None else max(1, plan.config.micro_batch_size // n)
    run = plan.run(body)
    gts: list[Tensor] = []
    samples: list[Tensor] = []
    for b0 in range(0, B, chunks_per_pass):
        chunks = slice(b0, min(B, b0 + chunks_per_pass))
        hidden, cache = prefill_chunk(body, input_ids[chunks], run)  # each [b, L, H]
        gts.append(plan.pool([h.index_select(1, plan.gt_cols) for h in hidden], plan.mask_of(chunks)))
        del hidden
        gen = forward_block_groups(body, cache, generated[chunks], plan.layout, steps=plan.layout.gen_len, run=run)
        del cache  # each gen [b*n, K, G, H], block-major
        samples.append(plan.pool([h.flatten(1, 2) for h in gen], plan.mask_of(chunks, repeat=n)))
    return gts, samples


def compute_features(
    feature_model: nn.Module,
    input_ids: Tensor,
    generated: Tensor,
    layout: StridedLayout | None = None,
    config: FeatureConfig | None = None,
    *,
    context_len: int | None = None,
    stride: int | None = None,
    answer_mask: Tensor | None = None,
    **overrides: Any,
) -> Features:
    """Ground-truth and sample features of strided rollouts with the frozen feature network.

    For block ``k`` of chunk ``b``: ``psi_{b,k} = pool_t z(c_k || y_k[:t+1])`` and
    ``phi_{b,i,k} = pool_t z(c_k || ŷ_{i,k}[:t+1])`` (``t < G``), ``z`` the per-token feature of
    :func:`token_features` and ``pool`` that of :func:`pool_blocks`; then optional whitening over the ``n``
    samples (see the module docstring).

    Args:
        feature_model: a HF causal LM (its backbone is run, so no logits are computed), a base ``AutoModel``,
            or a :class:`FeatureNetwork` (only its model is used: the settings are ``config``). Run in eval
            mode under ``torch.no_grad``; the caller's ``training`` flag is restored afterwards. Must accept
            4D additive masks (eager / sdpa attention, not FlashAttention-2).
        input_ids: ``LongTensor[B, L]`` chunks.
        generated: ``LongTensor[B, n, K, G]`` block-major samples.
        layout: the strided geometry; or give ``context_len`` and ``stride`` (``L``, ``G`` are read from the
            inputs).
        config: the settings (default ``FeatureConfig()``).
        answer_mask: optional ``[B, L]`` answer mask (docs/algorithm.md §3.6): question-token features are zeroed
            after normalisation and ``last_token`` pools the last answer token of each window; generated token
            ``(t, k)`` inherits the mask of ``C + k*s + t``.
        overrides: :class:`FeatureConfig` fields replacing those of ``config`` (e.g. ``whiten=True``).

    Returns:
        :class:`Features` (``gt [B, K, D]``, ``samples [B, n, K, D]``, whitened ``[B, n, K, D]`` or ``None``).
    """
    config = (config or FeatureConfig()).with_overrides(**overrides)
    model = feature_model.model if isinstance(feature_model, FeatureNetwork) else feature_model
    layout = resolve_layout(layout, input_ids, generated, context_len=context_len, stride=stride)
    B, n = generated.shape[:2]
    if answer_mask is not None and tuple(answer_mask.shape) != (B, layout.seq_len):
        raise ValueError(f"answer_mask must be [B, L] = {(B, layout.seq_len)}, got {tuple(answer_mask.shape)}")
    selection = resolve_hidden_state_method(config.hidden_state_method, num_hidden_layers(model))
    device = model_device(model, input_ids.device)
    plan = _make_plan(config, selection, layout, answer_mask, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward = _shared_chunk_pass if config.share_chunk else _full_sequence_pass
            gts, samples = forward(backbone(model), input_ids.to(device), generated.to(device), plan)
    finally:
        model.train(was_training)
    return _assemble(torch.cat(gts, dim=0), torch.cat(samples, dim=0), n, plan)


def _make_plan(
    config: FeatureConfig,
    selection: LayerSelection,
    layout: StridedLayout,
    answer_mask: Tensor | None,
    device: torch.device,
) -> _Plan:
    """Window positions (``C + k*s + t``, block-major) and their answer mask ``[B, K, G]``."""
    gt_cols = layout.target_positions(device).reshape(-1)
    window_mask = None
    if answer_mask is not None:
        window_mask = answer_mask.to(device).bool()[:, gt_cols].reshape(-1, layout.num_blocks, layout.gen_len)
    return _Plan(config, selection, layout, gt_cols, window_mask)


def _assemble(gt: Tensor, samples: Tensor, n: int, plan: _Plan) -> Features:
    """:class:`Features` from pooled ``gt [B, K, (G,) NF, D_g]`` and ``samples [B*n, K, (G,) NF, D_g]``:
    optional whitening per group, then the ``NF`` groups flattened into ``D = NF * D_g``."""
    samples = samples.reshape(-1, n, *samples.shape[1:])  # [B, n, K, (G,) NF, D_g]
    whitened_samples = whitened_gt = None
    if plan.config.whiten:
        ws, wg = whiten_block_features(samples, gt, **plan.config.whiten_kwargs)
        whitened_samples, whitened_gt = ws.flatten(-2), wg.flatten(-2)
    return Features(
        gt=gt.flatten(-2),
        samples=samples.flatten(-2),
        whitened_samples=whitened_samples,
        whitened_gt=whitened_gt,
        layout=plan.layout,
        num_groups=plan.selection.num_groups,
        embed_method=plan.config.embed_method,
    )


# --------------------------------------------------------------------------------------------------------
# Module wrapper
# --------------------------------------------------------------------------------------------------------


class FeatureNetwork(nn.Module):
    """Frozen feature network phi: a HF causal LM (or base model) plus its :class:`FeatureConfig`.

    On construction the model is put in eval mode and every parameter gets ``requires_grad=False``;
    :meth:`train` keeps it in eval mode, so a parent ``.train()`` call cannot switch dropout on. It has no
    trainable parameters: never wrap it in DDP/FSDP or hand it to an optimiser.

    Args:
        model: the frozen critic (the paper uses the *base* model, even when the policy is warm-started).
        config: the feature settings (default ``FeatureConfig()``).
        overrides: :class:`FeatureConfig` fields replacing those of ``config`` (the keyword form
            ``FeatureNetwork(model, embed_method=..., whiten=...)``).

    Attributes:
        config: the settings.
        selection: ``config.hidden_state_method`` resolved for this model.
    """

    def __init__(self, model: nn.Module, config: FeatureConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = (config or FeatureConfig()).with_overrides(**overrides)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.selection = resolve_hidden_state_method(config.hidden_state_method, num_hidden_layers(model))
        self.config = replace(config, hidden_state_method=self.selection)
        super().train(False)

    @property
    def share_chunk(self) -> bool:
        """``config.share_chunk``."""
        return self.config.share_chunk

    @property
    def embed_method(self) -> str:
        """``config.embed_method``."""
        return self.config.embed_method

    @property
    def whiten(self) -> bool:
        """``config.whiten``."""
        return self.config.whiten

    def train(self, mode: bool = True) -> FeatureNetwork:
        """Ignore ``mode``: the feature network always stays in eval mode."""
        return super().train(False)

    def forward(
        self,
        input_ids: Tensor,
        generated: Tensor,
        layout: StridedLayout | None = None,
        *,
        context_len: int | None = None, stride: int | None = None,  # older form of ``layout``
        answer_mask: Tensor | None = None,
        whiten: bool | None = None,
    ) -> Features:
        """Features of ``input_ids [B, L]`` and ``generated [B, n, K, G]`` with :attr:`config` (see
        :func:`compute_features`); ``whiten`` overrides ``config.whiten`` for this call."""
        config = self.config if whiten is None else self.config.with_overrides(whiten=whiten)
        return compute_features(
            self.model, input_ids, generated, layout, config, context_len=context_len, stride=stride,
            answer_mask=answer_mask,
        )
