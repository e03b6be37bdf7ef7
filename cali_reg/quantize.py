"""Choosing the quantised model: integer codes for a linear model's float parameters.

Pure numpy, no file access. ``quantize`` returns a ``cali_reg.model.QuantizedModel``,
whose arrays ``cali_reg.model`` decodes for inference.

Schemes (``SCHEMES``): ``window``, the seed project's, kept for comparison;
``affine``, per-tensor with an integer zero point; ``pow2``, a power-of-two scale
per coefficient. The last two keep the intercept as a float32, can re-fit it
after quantising the coefficients, and can round error-aware or optimally.

``optimal`` rounding solves the closest-vector problem exactly: the codes q that
minimise the rise in training MSE, (q*s - c)' G (q*s - c) with G the centred
feature covariance when the intercept is re-fitted, found by sphere decoding
(Schnorr-Euchner enumeration). On pow2 it also moves each coefficient's exponent
one step finer or coarser while that lowers the training error (coordinate
descent), which lets correlated coefficients compensate for each other's rounding
(docs/quantisation.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cali_reg.model import QuantizedModel, code_dtype

ROUNDINGS = ("nearest", "error_aware", "optimal")
MAX_SEARCH_COEFS = 16  # error-aware rounding tries 2**n roundings
# Training-cost differences below this fraction of the cost are ties, decided by a
# fixed rule instead: a different CPU or BLAS moves the cost by ~1e-16 relative,
# so no choice of codes, exponents or bit width hinges on the last bits of a sum.
TIE = 1e-9
MAX_DESCENT_ROUNDS = 10  # exponent coordinate descent: passes over the coefficients
# The sphere decoder visits ~10 to 300 nodes per solve on this data; past this
# budget it stops with the best codes found (never worse than error_aware).
MAX_NODES = 200_000
EXPONENTS = np.iinfo(np.int8)  # pow2 exponents are stored as int8


def pack_fields(fields, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit integers end to end, most significant bit first.

    The sound schemes store their codes this way, so a 4-bit code costs half a
    byte in the payload and in the file alike.
    """
    fields = np.asarray(fields, dtype=np.int64)
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((fields[:, None] >> shifts) & 1).astype(np.uint8).ravel())


# --- the seed's scheme -------------------------------------------------------------


def quantize_window(coef, intercept, bits: int, margin: float) -> dict:
    """The seed project's scheme, kept bit for bit.

    Every parameter p gets its own range [p - margin, p + margin], computed in
    float32. Because p sits at the centre of its own window, every code lands on
    the middle value and the information lives in the stored float ``min``.
    """
    params = np.append(np.asarray(coef, dtype=np.float64), intercept).astype(np.float32)
    margin = np.float32(margin)
    levels = np.float32(2**bits - 1)
    lo = params - margin
    scale = (params + margin - lo) / levels
    codes = np.round((params - lo) / scale).astype(code_dtype(bits))
    return {"codes": codes, "min": lo, "scale": scale}


# --- the sound schemes: coefficients on an integer grid ----------------------------


class Grid(NamedTuple):
    """Where each coefficient may go: ``code * step`` with an integer code in [lo, hi]."""

    step: np.ndarray  # float64, one per coefficient
    lo: np.ndarray  # int64, one per coefficient
    hi: np.ndarray
    stored: dict  # the arrays that define the grid (scale and zero point, exponents)


def affine_grid(coef, bits: int, margin: float) -> Grid:
    """Per-tensor asymmetric affine grid with an integer zero point.

    The range [min(coef, 0) - margin, max(coef, 0) + margin] always holds 0.0,
    which the zero point dequantises to exactly. The float32 scale is rounded up
    so that the range fits in 2**bits - 1 steps: every coefficient is then within
    half a step of a code.
    """
    levels = 2**bits - 1
    lo = min(float(np.min(coef)), 0.0) - margin
    hi = max(float(np.max(coef)), 0.0) + margin
    with np.errstate(over="ignore"):
        scale = np.float32((hi - lo) / levels)
    if scale < (hi - lo) / levels:
        scale = np.nextafter(scale, np.float32(np.inf))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError("the coefficients' range does not fit a float32 scale")
    zero_point = int(np.clip(np.rint(-lo / float(scale)), 0, levels))
    n = len(coef)
    return Grid(
        np.full(n, float(scale)),
        np.full(n, -zero_point),
        np.full(n, levels - zero_point),
        {
            "scale": np.array([scale], dtype=np.float32),
            "zero_point": np.array([zero_point], dtype=code_dtype(bits)),
        },
    )


def affine_encode(codes, bits: int, grid: Grid) -> dict:
    return {"codes": pack_fields(codes + int(grid.stored["zero_point"][0]), bits)} | grid.stored


def pow2_grid(coef, bits: int, margin: float | None = None) -> Grid:
    """Per-coefficient power-of-two scale, signed codes in [-qmax, qmax], qmax = 2**(bits-1) - 1.

    Each coefficient c gets the smallest exponent e with |c| <= qmax * 2**e, so
    c / 2**e lies in (qmax/2, qmax] in magnitude and the relative error is below
    1/qmax for every coefficient, however small: each feature's contribution to
    the prediction moves by the same small fraction, whatever the feature's units.
    ``margin`` is not used.
    """
    qmax = 2 ** (bits - 1) - 1
    mag = np.abs(np.asarray(coef, dtype=np.float64))
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(mag / qmax))
    e = np.clip(np.nan_to_num(e, neginf=EXPONENTS.min), EXPONENTS.min, EXPONENTS.max + 1)
    e = e.astype(np.int64)
    # log2 may be off by an ulp: settle e exactly (ldexp is exact)
    e += mag > np.ldexp(float(qmax), e)
    e -= (mag <= np.ldexp(float(qmax), e - 1)) & (e > EXPONENTS.min)
    if np.any(e > EXPONENTS.max):
        raise ValueError(f"a coefficient is too large for the pow2 scheme (above {qmax} * 2**127)")
    return _pow2_grid_of(e, bits)


def _pow2_grid_of(exponents: np.ndarray, bits: int) -> Grid:
    qmax, n = 2 ** (bits - 1) - 1, len(exponents)
    return Grid(
        np.ldexp(1.0, exponents),
        np.full(n, -qmax),
        np.full(n, qmax),
        {"exponents": np.asarray(exponents).astype(np.int8)},
    )


def pow2_encode(codes, bits: int, grid: Grid) -> dict:
    fields = np.asarray(codes, dtype=np.int64) & (2**bits - 1)  # two's complement
    return {"codes": pack_fields(fields, bits)} | grid.stored


# --- rounding and the intercept of the sound schemes ---------------------------------


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


def _costs(deltas, gram, cross) -> np.ndarray:
    deltas = np.atleast_2d(deltas)
    return np.einsum("ij,jk,ik->i", deltas, gram, deltas) - 2 * (deltas @ cross)


def rounding_cost(deltas, coef, X, y, intercept=None) -> np.ndarray:
    """Training MSE of ``coef + delta`` minus that of ``coef``, for each row of ``deltas``.

    With ``intercept=None`` every candidate gets its best intercept (see
    ``quadratic_cost``).
    """
    return _costs(deltas, *quadratic_cost(coef, X, y, intercept))


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
        return _nearest(grid, coef)
    gram, cross = quadratic_cost(coef, *calibration, intercept)
    start = _error_aware(grid, coef, gram, cross)
    if rounding == "error_aware":
        return start
    bound = float(_costs(start * grid.step - coef, gram, cross)[0])
    found = closest_codes(grid, coef, gram, cross, bound)
    return start if found is None else found  # None: past MAX_NODES, or a singular gram


def _nearest(grid: Grid, coef: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(coef / grid.step), grid.lo, grid.hi).astype(np.int64)


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
    cost = _costs(candidates * grid.step - coef, gram, cross)
    return candidates[int(np.argmin(cost))].astype(np.int64)


def _search_order(h: np.ndarray) -> list[int]:
    """Coordinates in the order the search fixes them, last first (V-BLAST ordering).

    The first coordinate searched is the one whose code the others pin down most
    (smallest conditional variance), so few of its values survive the radius;
    then the same among those left. On this data that cuts the nodes visited at
    4 bits from thousands to about ten.
    """
    left = list(range(len(h)))
    first_to_last = []
    while left:
        variance = np.diag(np.linalg.inv(h[np.ix_(left, left)]))
        first_to_last.append(left.pop(int(np.argmin(variance))))
    return first_to_last[::-1]


def closest_codes(grid: Grid, coef, gram, cross, bound: float) -> np.ndarray | None:
    """The codes on ``grid`` with the lowest cost d'(gram)d - 2d'(cross), d = codes*step - coef.

    An exact search (sphere decoding with Schnorr-Euchner enumeration) over the
    codes whose cost is at most ``bound``; None if there are none, or if the
    features are collinear on the calibration data (a singular ``gram``: no unique
    best codes to search for). Codes whose costs differ by less than ``TIE`` are
    ties, and the lexicographically smallest wins, so near-ties cannot flip
    between machines.
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
    cost = _costs(deltas, gram, cross)
    scale = max(abs(float(cost.min())), float(_costs(deltas, gram, 0 * cross).min()))
    return candidates[int(np.flatnonzero(cost <= cost.min() + TIE * scale)[0])]


def pow2_optimal(coef, bits: int, calibration, intercept=None) -> tuple[Grid, np.ndarray]:
    """The pow2 grid and codes with the lowest training error found by exponent descent.

    Starts from ``pow2_grid`` with its ``closest_codes``, then tries each
    coefficient's exponent one step finer (its code may clip at +-qmax) and one
    step coarser, re-solving the codes exactly, and keeps a move only if it lowers
    the cost by more than ``TIE``; at most ``MAX_DESCENT_ROUNDS`` passes, in a
    fixed order.
    """
    coef = np.asarray(coef, dtype=np.float64)
    gram, cross = quadratic_cost(coef, *calibration, intercept)
    grid = pow2_grid(coef, bits)
    codes = round_codes(grid, coef, "optimal", calibration, intercept)
    best = float(_costs(codes * grid.step - coef, gram, cross)[0])
    exponents = grid.stored["exponents"].astype(np.int64)
    for _ in range(MAX_DESCENT_ROUNDS):
        moved = False
        for i in range(len(coef)):
            for move in (-1, 1):
                trial = exponents.copy()
                trial[i] += move
                if not EXPONENTS.min <= trial[i] <= EXPONENTS.max:
                    continue
                g = _pow2_grid_of(trial, bits)
                found = closest_codes(g, coef, gram, cross, best)
                if found is None:
                    continue
                cost = float(_costs(found * g.step - coef, gram, cross)[0])
                if cost < best - TIE * abs(best):
                    grid, codes, best, exponents, moved = g, found, cost, trial, True
        if not moved:
            break
    return grid, codes


def refit_intercept(weights, X, y) -> float:
    """The intercept that suits ``weights`` best on (X, y): the mean residual.

    The bias correction of post-training quantisation: it absorbs the mean of
    the coefficients' rounding errors times the features' means.
    """
    X = np.asarray(X, dtype=np.float64)
    return float(np.mean(np.asarray(y, dtype=np.float64) - X @ weights))


class Scheme(NamedTuple):
    """How a scheme chooses its stored arrays, and which params it honours."""

    # (coef, intercept, bits, margin, rounding, refit, calibration) -> stored arrays
    quantize: Callable[..., dict]
    uses_margin: bool  # margin shapes the grid (a window or a padding)
    refines: bool  # honours rounding= and refit_intercept=
    margin_is_loss: bool = False  # margin is the training R² loss accepted (quantize_within)


def _window_quantize(coef, intercept, bits, margin, *ignored) -> dict:
    return quantize_window(coef, intercept, bits, margin)


def _sound_scheme(grid, encode, uses_margin: bool, search=None) -> Scheme:
    """A scheme whose coefficients sit on ``grid`` and whose intercept is one float32.

    ``search(coef, bits, calibration, intercept) -> (grid, codes)``, if given, is
    what ``optimal`` rounding does instead of the exact codes on the fixed grid.
    """

    def quantize_(coef, intercept, bits, margin, rounding, refit, calibration):
        fixed = None if refit else float(np.float32(intercept))
        if rounding == "optimal" and search is not None:
            g, codes = search(coef, bits, calibration, fixed)
        else:
            g = grid(coef, bits, margin)
            codes = round_codes(g, coef, rounding, calibration, fixed)
        if refit:
            intercept = refit_intercept(codes * g.step, *calibration)
        with np.errstate(over="ignore"):
            stored = np.array([intercept], dtype=np.float32)
        if not np.isfinite(stored[0]):
            raise ValueError("the intercept does not fit a float32")
        return encode(codes, bits, g) | {"intercept": stored}

    return Scheme(quantize_, uses_margin, refines=True, margin_is_loss=not uses_margin)


SCHEMES = {
    "window": Scheme(_window_quantize, uses_margin=True, refines=False),
    "affine": _sound_scheme(affine_grid, affine_encode, uses_margin=True),
    "pow2": _sound_scheme(pow2_grid, pow2_encode, uses_margin=False, search=pow2_optimal),
}


def quantize(
    coef,
    intercept,
    *,
    scheme: str,
    bits: int,
    feature_names,
    margin: float | None = None,
    rounding: str = "nearest",
    refit_intercept: bool = False,
    calibration=None,
) -> QuantizedModel:
    """Quantise a linear model's parameters with the named scheme.

    ``margin`` is used by the schemes with ``uses_margin``; ``rounding`` and
    ``refit_intercept`` by those with ``refines`` (the others ignore them), and
    both need ``calibration`` = (X, y), the training data. The bit width is
    ``bits``; ``quantize_within`` picks it by accuracy.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; known: " + ", ".join(SCHEMES))
    spec = SCHEMES[scheme]
    if coef.ndim != 1 or len(coef) != len(feature_names):
        raise ValueError(f"coef must be 1-D with one value per feature, got shape {coef.shape}")
    if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
        raise ValueError("coef and intercept must be finite")
    _check_bits(bits)
    if spec.uses_margin and not (margin is not None and margin > 0):
        raise ValueError(f"scheme {scheme} needs a margin > 0, got {margin!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if spec.refines and (refit_intercept or rounding != "nearest"):
        calibration = _check_calibration(calibration, len(coef))
    arrays = spec.quantize(
        coef, float(intercept), int(bits), margin, rounding, bool(refit_intercept), calibration
    )
    return QuantizedModel(scheme, int(bits), tuple(feature_names), arrays)


def _check_bits(bits) -> None:
    if not (isinstance(bits, (int, np.integer)) and 2 <= bits <= 16):
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}")


def _check_calibration(calibration, n_features):
    if calibration is None:
        raise ValueError(
            "refit_intercept and error-aware or optimal rounding need calibration=(X, y)"
        )
    X, y = (np.asarray(a, dtype=np.float64) for a in calibration)
    if X.ndim != 2 or X.shape[1] != n_features or y.shape != (X.shape[0],) or len(y) == 0:
        raise ValueError(
            f"calibration must be X of shape (m, {n_features}) and y of shape (m,), "
            f"got {X.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("calibration data must be finite")
    return X, y


def training_loss(qmodel: QuantizedModel, coef, intercept: float, X, y) -> float:
    """R² of the float model (``coef``, ``intercept``) minus R² of ``qmodel``, on (X, y).

    The rise in MSE is computed from the change in prediction, not as a
    difference of two MSEs, so that it keeps its digits when it is small.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    residual = y - X @ np.asarray(coef, dtype=np.float64) - intercept
    shift = X @ (qmodel.coef - coef) + (qmodel.intercept - intercept)
    rise = float(np.mean(shift * shift) - 2 * np.mean(residual * shift))
    return rise / float(np.mean((y - y.mean()) ** 2))


def quantize_within(
    coef,
    intercept,
    *,
    scheme: str,
    bits: int,
    margin: float,
    feature_names,
    rounding: str = "nearest",
    refit_intercept: bool = False,
    calibration=None,
) -> QuantizedModel:
    """The quantised model that the quantize stage saves.

    Under a scheme with ``margin_is_loss`` (pow2), ``margin`` is the accuracy
    criterion: the model is the one with the fewest bits, at most ``bits``, whose
    R² on ``calibration`` (the training data) is at most ``margin`` below the float
    model's; with ``bits`` bits if none is, or if ``margin`` is 0. Under the other
    schemes ``margin`` shapes the grid and the width is ``bits``.
    """
    kw = {
        "scheme": scheme,
        "feature_names": feature_names,
        "margin": margin,
        "rounding": rounding,
        "refit_intercept": refit_intercept,
        "calibration": calibration,
    }
    if scheme not in SCHEMES or not SCHEMES[scheme].margin_is_loss or not margin:
        return quantize(coef, intercept, bits=bits, **kw)
    _check_bits(bits)
    if not margin > 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    X, y = _check_calibration(calibration, np.size(coef))
    for narrow in range(2, bits):
        qmodel = quantize(coef, intercept, bits=narrow, **kw)
        if training_loss(qmodel, coef, intercept, X, y) <= margin:
            return qmodel
    return quantize(coef, intercept, bits=bits, **kw)
