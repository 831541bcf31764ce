"""FLOPs of the recurrent gate matmuls, and the same work as a list of GEMMs (item 4's ceiling)."""

from __future__ import annotations

from collections.abc import Sequence

GATES = {"lstm": 4, "gru": 3}


def lstm_gate_flops(n_features: int, hidden_sizes: Sequence[int], window: int, cell: str = "lstm") -> int:
    """Return the forward FLOPs of the gate matmuls for one window (one sample).

    Layer ``i`` with input width ``I`` and hidden width ``H`` computes, at each of the ``T`` steps,
    ``W_ih x_t`` (G*H x I) and ``W_hh h_{t-1}`` (G*H x H), G = 4 gates (3 for a GRU): a multiply and
    an add per weight, so ``2 * T * G*H * (I + H)`` FLOPs. A training step costs about 3x the forward
    (backward = input gradients + weight gradients, each one more matmul of the same size).
    Projections, the head, biases and the element-wise gate math are left out (< 3 % here).

    >>> lstm_gate_flops(1, [2], window=3)  # 2 * 3 steps * 8 gate rows * (1 + 2) inputs
    144
    """
    gates, total, width = GATES[cell], 0, n_features
    for size in hidden_sizes:
        total += 2 * window * gates * size * (width + size)
        width = size
    return total


def gemm_shapes(n_features: int, hidden_sizes: Sequence[int], window: int, batch: int,
                cell: str = "lstm") -> list[tuple[int, int, int, int]]:
    """Return the ``(m, k, n, count)`` matmuls of one training batch's gate math, as GEMMs.

    Per layer (input I, hidden H, G*H gate rows): the input projection of the whole window at once
    ``(T*B, I) @ (I, GH)``, and per step ``(B, H) @ (H, GH)``; backward: the input and weight
    gradients of both, ``(T*B, GH) @ (GH, I)``, ``(GH, T*B) @ (T*B, I)``, and per step
    ``(B, GH) @ (GH, H)``, ``(GH, B) @ (B, H)``. Their FLOPs sum to 3x :func:`lstm_gate_flops` x B.

    >>> gemm_shapes(1, [2], window=3, batch=4)[:2]
    [(12, 1, 8, 1), (4, 2, 8, 3)]
    """
    shapes, width, tb = [], n_features, window * batch
    for size in hidden_sizes:
        gh = GATES[cell] * size
        shapes += [(tb, width, gh, 1), (batch, size, gh, window),  # forward
                   (tb, gh, width, 1), (gh, tb, width, 1),  # backward of the input projection
                   (batch, gh, size, window), (gh, batch, size, window)]  # backward, per step
        width = size
    return shapes


def gemm_flops(shapes: Sequence[tuple[int, int, int, int]]) -> int:
    """FLOPs of a list of ``(m, k, n, count)`` GEMMs: ``2 m k n`` each."""
    return sum(2 * m * k * n * count for m, k, n, count in shapes)
