"""The rule a strided geometry must satisfy, without torch, so the workflow checks it when it builds the DAG.

A chunk of ``L`` tokens with context ``C``, stride ``s`` and ``G`` generated tokens per block has
``K = (L − G − C) / s + 1`` blocks; the geometry is valid when all four are positive integers, ``C + G ≤ L``
and ``s`` divides ``L − G − C``. :class:`ebft.strided.StridedLayout` enforces it with :func:`check_geometry`.
"""

from __future__ import annotations


def check_geometry(seq_len: int, context_len: int, stride: int, gen_len: int) -> None:
    """Raise ``ValueError`` (message prefixed ``StridedLayout:``) unless ``(L, C, s, G)`` is a valid geometry."""
    values = {"seq_len": seq_len, "context_len": context_len, "stride": stride, "gen_len": gen_len}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"StridedLayout: {name} must be a positive integer, got {value!r} ({values})")
    span = seq_len - gen_len - context_len
    if span < 0:
        raise ValueError(f"StridedLayout: need context_len + gen_len <= seq_len, got context_len={context_len} + "
                         f"gen_len={gen_len} > seq_len={seq_len}")
    if span % stride != 0:
        raise ValueError(f"StridedLayout: (seq_len - gen_len - context_len) must be divisible by stride, got "
                         f"({seq_len} - {gen_len} - {context_len}) = {span} and stride={stride}")


def strided_length(seq_len: int, context_len: int, stride: int, gen_len: int) -> int:
    """``S = L + G·K`` with ``K = (L − G − C) / s + 1`` blocks: the length of the strided sequence that the
    sampler, the scorer and the feature network process (positions up to ``S − 1`` are used)."""
    check_geometry(seq_len, context_len, stride, gen_len)
    return seq_len + gen_len * ((seq_len - gen_len - context_len) // stride + 1)
