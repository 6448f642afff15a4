"""Connected components of a binary mask (numpy only; no scipy / OpenCV) and peak picking."""

from __future__ import annotations

import numpy as np
import torch


def connected_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected regions of an HxW boolean mask.

    Returns ``(labels, n)``: ``labels`` HxW int32 with 0 for background and 1..n for the regions,
    numbered in raster order of their first pixel; ``connectivity`` 4 (edges) or 8 (edges + corners).

    Union-find on the pixel adjacency graph, vectorised: every round hooks the larger of the two roots
    of each still-split edge onto the smaller one, then compresses paths fully (pointer jumping), so
    every label stays <= its pixel's index and the loop ends after a few rounds.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return labels, 0
    node = np.full(h * w, -1, dtype=np.int64)
    node[flat] = np.arange(flat.size)
    node = node.reshape(h, w)
    pairs = [(node[:, :-1], node[:, 1:]), (node[:-1, :], node[1:, :])]
    if connectivity == 8:
        pairs += [(node[:-1, :-1], node[1:, 1:]), (node[:-1, 1:], node[1:, :-1])]
    us, vs = [], []
    for a, b in pairs:
        both = (a >= 0) & (b >= 0)
        us.append(a[both])
        vs.append(b[both])
    u, v = np.concatenate(us), np.concatenate(vs)
    parent = np.arange(flat.size)
    while True:
        pu, pv = parent[u], parent[v]
        split = pu != pv
        if not split.any():
            break
        lo, hi = np.minimum(pu[split], pv[split]), np.maximum(pu[split], pv[split])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every node points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    roots, inverse = np.unique(parent, return_inverse=True)
    labels.reshape(-1)[flat] = inverse.astype(np.int32) + 1
    return labels, int(roots.size)


def peak_points(prob: torch.Tensor, threshold: float, max_points: int, radius: int) -> list[tuple[int, int]]:
    """Up to ``max_points`` separated maxima of an hxw map as (row, col), highest first.

    The first point is always returned (the global maximum) even below ``threshold``; further points
    must exceed ``threshold`` and lie more than ``radius`` cells (Chebyshev distance) from earlier ones.
    """
    p = prob.detach().float().clone()
    out: list[tuple[int, int]] = []
    for _ in range(max(1, max_points)):
        value, idx = p.flatten().max(0)
        if out and (not torch.isfinite(value) or value <= threshold):
            break
        i, j = divmod(int(idx), p.shape[1])
        out.append((i, j))
        p[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1] = -float("inf")
    return out
