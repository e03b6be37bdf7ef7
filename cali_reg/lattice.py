"""Choosing integer codes: the closest-vector searches that every format's encoder shares.

Pure numpy maths, no file access. With the intercept re-fitted, moving the
coefficients by d raises the training MSE by exactly d'Gd - 2d'b (``quadratic_cost``),
so choosing codes is a closest-vector problem, solved exactly by sphere decoding
(Schnorr-Euchner enumeration): ``closest_codes`` on a uniform grid per coefficient,
``closest_values`` on any finite sorted alphabet per coordinate (minifloat codes,
an intercept's own alphabet), optionally with a penalty added at the leaves.
"""

from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import numpy as np

# Training-cost differences below this fraction of the cost are ties, decided by a
# fixed rule instead: a different CPU or BLAS moves the cost by ~1e-16 relative,
# so no choice of codes hinges on the last bits of a sum.
TIE = 1e-9
MAX_SEARCH_COEFS = 16  # error-aware rounding tries 2**n roundings
# A search stops at this many nodes with the best codes found so far (never worse
# than its starting point): a bound on the time, far above what a solve needs here.
MAX_NODES = 200_000


class Grid(NamedTuple):
    """Where each coefficient may go: ``code * step`` with an integer code in [lo, hi]."""

    step: np.ndarray  # float64, one per coefficient
    lo: np.ndarray  # int64, one per coefficient
    hi: np.ndarray
    stored: dict  # the arrays that define the grid (scale and zero point, exponents)


def quadratic_cost(coef, X, y, intercept=None) -> tuple[np.ndarray, np.ndarray]:
    """(gram, cross) such that the training MSE of ``coef + d`` exceeds that of ``coef``
    by d'(gram)d - 2 d'(cross).

    With ``intercept=None`` every candidate gets its best intercept (the mean
    residual): gram is then the centred feature covariance. Written this way, and
    not as a difference of two MSEs, the tiny differences between candidates are
    not lost next to the MSE itself.
    """
    X = np.asarray(X, dtype=np.float64)
    residual = np.asarray(y, dtype=np.float64) - X @ coef
    if intercept is None:
        X, residual = X - X.mean(axis=0), residual - residual.mean()
    else:
        residual = residual - intercept
    m = len(residual)
    return X.T @ X / m, X.T @ residual / m


def costs(deltas, gram, cross) -> np.ndarray:
    """d'(gram)d - 2d'(cross) for each row d of ``deltas``."""
    deltas = np.atleast_2d(deltas)
    return np.einsum("ij,jk,ik->i", deltas, gram, deltas) - 2 * (deltas @ cross)


def refit_intercept(weights, X, y) -> float:
    """The intercept that suits ``weights`` best on (X, y): the mean residual.

    The bias correction of post-training quantisation: it absorbs the mean of
    the coefficients' rounding errors times the features' means.
    """
    X = np.asarray(X, dtype=np.float64)
    return float(np.mean(np.asarray(y, dtype=np.float64) - X @ weights))


def round_codes(grid: Grid, coef, rounding="nearest", calibration=None, intercept=None):
    """Integer codes that put ``coef`` on ``grid``.

    ``nearest`` rounds each coefficient on its own. ``error_aware`` rounds each
    one down or up, whichever combination (an exact search over all 2**n) has the
    lowest error on ``calibration`` = (X, y), with ``intercept`` fixed or, if
    None, re-fitted. ``optimal`` finds the codes with the lowest such error among
    all codes of the grid (``closest_codes``).
    """
    coef = np.asarray(coef, dtype=np.float64)
    if rounding == "nearest":
        return np.clip(np.rint(coef / grid.step), grid.lo, grid.hi).astype(np.int64)
    gram, cross = quadratic_cost(coef, *calibration, intercept)
    start = _error_aware(grid, coef, gram, cross)
    if rounding == "error_aware":
        return start
    bound = float(costs(start * grid.step - coef, gram, cross)[0])
    found = closest_codes(grid, coef, gram, cross, bound)
    return start if found is None else found  # None: past MAX_NODES, or a singular gram


def _error_aware(grid: Grid, coef: np.ndarray, gram, cross) -> np.ndarray:
    t = coef / grid.step
    if len(t) > MAX_SEARCH_COEFS:
        raise ValueError(
            f"error-aware rounding tries 2**n roundings; n = {len(t)} is above {MAX_SEARCH_COEFS}"
        )
    floor = np.clip(np.floor(t), grid.lo, grid.hi)
    ceil = np.clip(np.ceil(t), grid.lo, grid.hi)
    up = (np.arange(2 ** len(t))[:, None] >> np.arange(len(t))) & 1
    candidates = floor + up * (ceil - floor)
    cost = costs(candidates * grid.step - coef, gram, cross)
    return candidates[int(np.argmin(cost))].astype(np.int64)


def _search_order(h: np.ndarray) -> list[int]:
    """Coordinates in the order the search fixes them, last first (V-BLAST ordering).

    The first coordinate searched is the one whose value the others pin down most
    (smallest conditional variance), so few of its values survive the radius;
    then the same among those left: far fewer nodes than the natural order.
    """
    left = list(range(len(h)))
    first_to_last = []
    while left:
        variance = np.diag(np.linalg.inv(h[np.ix_(left, left)]))
        first_to_last.append(left.pop(int(np.argmin(variance))))
    return first_to_last[::-1]


def closest_codes(grid: Grid, coef, gram, cross, bound: float) -> np.ndarray | None:
    """The codes on ``grid`` with the lowest cost d'(gram)d - 2d'(cross), d = codes*step - coef.

    An exact search over the codes whose cost is at most ``bound``; None if there
    are none, or if the features are collinear on the calibration data (a singular
    ``gram``: no unique best codes to search for). Codes whose costs differ by less
    than ``TIE`` are ties, and the lexicographically smallest wins, so near-ties
    cannot flip between machines.
    """
    coef = np.asarray(coef, dtype=np.float64)
    n, step = len(coef), grid.step
    h = gram * np.outer(step, step)  # the cost in code units: (q - centre)'h(q - centre) - k
    g = step * cross
    try:
        centre = coef / step + np.linalg.solve(h, g)
        order = _search_order(h)
        r = np.linalg.cholesky(h[np.ix_(order, order)]).T  # upper triangular, h = r'r
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(centre)) and np.all(np.diag(r) > 0)):
        return None
    offset = float(g @ (centre - coef / step))  # metric = cost + offset
    diag2 = (np.diag(r) ** 2).tolist()
    coupling = (r / np.diag(r)[:, None]).tolist()
    c0 = centre[order].tolist()
    lo, hi = grid.lo[order].tolist(), grid.hi[order].tolist()
    state = {"limit": (bound + offset) * (1 + 4 * TIE), "nodes": 0}
    found: list[list[int]] = []
    q = [0] * n

    def search(k: int, partial: float) -> None:
        # the cost's minimum over code k, given the codes fixed above it
        row, c = coupling[k], c0[k]
        for j in range(k + 1, n):
            c -= row[j] * (q[j] - c0[j])
        below = min(max(math.floor(c), lo[k] - 1), hi[k])  # walk down from here
        above = below + 1  # and up from here, nearest first
        while state["nodes"] < MAX_NODES:
            cost_down = partial + diag2[k] * (below - c) ** 2 if below >= lo[k] else math.inf
            cost_up = partial + diag2[k] * (above - c) ** 2 if above <= hi[k] else math.inf
            if cost_down <= cost_up:
                q[k], cost, below = below, cost_down, below - 1
            else:
                q[k], cost, above = above, cost_up, above + 1
            if cost > state["limit"]:
                return
            state["nodes"] += 1
            if k:
                search(k - 1, cost)
            else:
                found.append(list(q))
                state["limit"] = min(state["limit"], cost * (1 + 4 * TIE))

    search(n - 1, 0.0)
    if not found:
        return None
    candidates = np.unique(np.array(found, dtype=np.int64)[:, np.argsort(order)], axis=0)
    deltas = candidates * step - coef
    cost = costs(deltas, gram, cross)
    scale = max(abs(float(cost.min())), float(costs(deltas, gram, 0 * cross).min()))
    return candidates[int(np.flatnonzero(cost <= cost.min() + TIE * scale)[0])]


def _tie_limit(best: float, widths: float = 1.0) -> float:
    """The highest total tied with ``best``: ``widths`` times ``TIE`` above it, relative.

    The search keeps four widths, room for the rounding of its partial sums, so that
    every total tied with the final best is among those it found.
    """
    return best + TIE * max(abs(best), 1e-300) * widths


def closest_values(
    alphabets: list[np.ndarray],
    ref,
    gram,
    cross,
    bound: float = math.inf,
    spread=None,
    weight: float = 0.0,
) -> tuple[np.ndarray, float] | None:
    """The indices into ``alphabets`` whose values v minimise cost(d) + weight * sqrt(d'(spread)d).

    d = v - ref; cost(d) = d'(gram)d - 2d'(cross); ``alphabets[i]`` is the sorted
    float64 array of the values coordinate i may take (a minifloat code's values,
    an intercept's grid); ``spread`` is positive definite (or None: no penalty).
    Exact: both terms are sums of squares over the coordinates fixed so far, so a
    branch is dropped as soon as its partial cost plus partial penalty exceeds the
    best total found. Only totals at most ``bound`` are searched. Returns
    (indices, total), or None if nothing is within ``bound`` or a matrix is
    singular. Near-ties (``TIE``) go to the lexicographically smallest indices.
    """
    ref = np.asarray(ref, dtype=np.float64)
    n = len(ref)
    spread = np.zeros((n, n)) if spread is None or weight == 0 else np.asarray(spread)
    try:
        centre = ref + np.linalg.solve(gram, cross)
        order = _search_order(gram)
        r = np.linalg.cholesky(gram[np.ix_(order, order)]).T
    except np.linalg.LinAlgError:
        return None
    try:
        rs = np.linalg.cholesky(spread[np.ix_(order, order)]).T if weight else spread
        exact_leaf = None
    except np.linalg.LinAlgError:
        # a singular spread (e.g. a perfect fit): no partial bound, the exact penalty at leaves
        rs, exact_leaf = np.zeros((n, n)), spread[np.ix_(order, order)]
    if not (np.all(np.isfinite(centre)) and np.all(np.diag(r) > 0)):
        return None
    offset = float(cross @ (centre - ref))  # cost = metric - offset
    diag2 = (np.diag(r) ** 2).tolist()
    coupling = (r / np.diag(r)[:, None]).tolist()
    rows = rs.tolist()
    c0, r0 = centre[order].tolist(), ref[order].tolist()
    as_lists: dict[int, list] = {}  # formats share one alphabet between coordinates
    values = [as_lists.setdefault(id(alphabets[i]), alphabets[i].tolist()) for i in order]
    inverse = np.argsort(order)
    best, nodes = bound, 0
    limit = _tie_limit(best, 4)
    found: list[tuple[float, list[int]]] = []
    idx, v = [0] * n, [0.0] * n

    def search(k: int, partial: float, spread_sq: float) -> None:
        # The hot loop of every minifloat encoder: the same arithmetic as written out in
        # the docstring, with the cut-off (limit) recomputed only when the best moves.
        nonlocal best, limit, nodes
        row, c = coupling[k], c0[k]
        for j in range(k + 1, n):
            c -= row[j] * (v[j] - c0[j])
        srow = rows[k]
        s_rest = sum(srow[j] * (v[j] - r0[j]) for j in range(k + 1, n))
        a, d2, sk, rk = values[k], diag2[k], srow[k], r0[k]
        size = len(a)
        above = bisect.bisect_left(a, c)  # a[above] >= c > a[above - 1]
        below = above - 1
        while nodes < MAX_NODES:
            cost_down = partial + d2 * (a[below] - c) ** 2 if below >= 0 else math.inf
            cost_up = partial + d2 * (a[above] - c) ** 2 if above < size else math.inf
            if cost_down <= cost_up:
                at, metric, below = below, cost_down, below - 1
            else:
                at, metric, above = above, cost_up, above + 1
            idx[k] = at
            if metric - offset > limit:
                return  # the cost alone only grows from here on at this level
            nodes += 1
            v[k] = vk = a[at]
            sq = spread_sq + (sk * (vk - rk) + s_rest) ** 2
            if exact_leaf is not None and k == 0:
                d = np.array(v) - r0
                sq = max(float(d @ exact_leaf @ d), 0.0)
            total = metric - offset + weight * math.sqrt(sq)
            if total > limit:
                continue
            if k:
                search(k - 1, metric, sq)
            else:
                found.append((total, [idx[i] for i in inverse]))
                if total < best:
                    best = total
                    limit = _tie_limit(best, 4)

    search(n - 1, 0.0, 0.0)
    if not found:
        return None
    best = min(total for total, _ in found)
    ties = sorted((i, total) for total, i in found if total <= _tie_limit(best))
    return np.array(ties[0][0], dtype=np.int64), ties[0][1]
