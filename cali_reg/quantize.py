"""Choosing the quantised model: integer codes for a linear model's float parameters.

Pure numpy, no file access. ``quantize`` returns a ``cali_reg.model.QuantizedModel``,
whose arrays ``cali_reg.model`` decodes for inference.

Schemes (``SCHEMES``): ``window``, the seed project's, kept for comparison;
``affine``, per-tensor with an integer zero point; ``pow2``, a power-of-two scale
per coefficient. The last two keep the intercept as a float32, can re-fit it
after quantising the coefficients, and can round error-aware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cali_reg.model import QuantizedModel, code_dtype

ROUNDINGS = ("nearest", "error_aware")
MAX_SEARCH_COEFS = 16  # error-aware rounding tries 2**n roundings
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


@dataclass(frozen=True)
class Grid:
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
    n = len(mag)
    return Grid(
        np.ldexp(1.0, e), np.full(n, -qmax), np.full(n, qmax), {"exponents": e.astype(np.int8)}
    )


def pow2_encode(codes, bits: int, grid: Grid) -> dict:
    fields = np.asarray(codes, dtype=np.int64) & (2**bits - 1)  # two's complement
    return {"codes": pack_fields(fields, bits)} | grid.stored


# --- rounding and the intercept of the sound schemes ---------------------------------


def rounding_cost(deltas, coef, X, y, intercept=None) -> np.ndarray:
    """Training MSE of ``coef + delta`` minus that of ``coef``, for each row of ``deltas``.

    With ``intercept=None`` every candidate gets its best intercept (the mean
    residual). Written as d'Gd - 2 d'X'r / m, with r the residual of ``coef``,
    so the tiny differences between candidates are not lost next to the MSE
    itself: the chosen rounding does not depend on the last bits of a sum.
    """
    X = np.asarray(X, dtype=np.float64)
    residual = np.asarray(y, dtype=np.float64) - X @ coef
    if intercept is None:
        X, residual = X - X.mean(axis=0), residual - residual.mean()
    else:
        residual = residual - intercept
    m = len(residual)
    gram, cross = X.T @ X / m, X.T @ residual / m
    return np.einsum("ij,jk,ik->i", deltas, gram, deltas) - 2 * (deltas @ cross)


def round_codes(grid: Grid, coef, rounding="nearest", calibration=None, intercept=None):
    """Integer codes that put ``coef`` on ``grid``.

    ``nearest`` rounds each coefficient on its own. ``error_aware`` rounds each
    one down or up, whichever combination (an exact search over all 2**n) has the
    lowest error on ``calibration`` = (X, y), with ``intercept`` fixed or, if
    None, re-fitted.
    """
    coef = np.asarray(coef, dtype=np.float64)
    t = coef / grid.step
    if rounding == "nearest":
        return np.clip(np.rint(t), grid.lo, grid.hi).astype(np.int64)
    if len(t) > MAX_SEARCH_COEFS:
        raise ValueError(
            f"error-aware rounding tries 2**n roundings; n = {len(t)} is above {MAX_SEARCH_COEFS}"
        )
    floor = np.clip(np.floor(t), grid.lo, grid.hi)
    ceil = np.clip(np.ceil(t), grid.lo, grid.hi)
    up = (np.arange(2 ** len(t))[:, None] >> np.arange(len(t))) & 1
    candidates = floor + up * (ceil - floor)
    cost = rounding_cost(candidates * grid.step - coef, coef, *calibration, intercept)
    return candidates[int(np.argmin(cost))].astype(np.int64)


def refit_intercept(weights, X, y) -> float:
    """The intercept that suits ``weights`` best on (X, y): the mean residual.

    The bias correction of post-training quantisation: it absorbs the mean of
    the coefficients' rounding errors times the features' means.
    """
    X = np.asarray(X, dtype=np.float64)
    return float(np.mean(np.asarray(y, dtype=np.float64) - X @ weights))


@dataclass(frozen=True)
class Scheme:
    """How a scheme chooses its stored arrays, and which params it honours."""

    # (coef, intercept, bits, margin, rounding, refit, calibration) -> stored arrays
    quantize: Callable[..., dict]
    uses_margin: bool
    refines: bool  # honours rounding= and refit_intercept=


def _window_quantize(coef, intercept, bits, margin, *ignored) -> dict:
    return quantize_window(coef, intercept, bits, margin)


def _sound_scheme(grid, encode, uses_margin: bool) -> Scheme:
    """A scheme whose coefficients sit on ``grid`` and whose intercept is one float32."""

    def quantize_(coef, intercept, bits, margin, rounding, refit, calibration):
        g = grid(coef, bits, margin)
        fixed = None if refit else float(np.float32(intercept))
        codes = round_codes(g, coef, rounding, calibration, fixed)
        if refit:
            intercept = refit_intercept(codes * g.step, *calibration)
        with np.errstate(over="ignore"):
            stored = np.array([intercept], dtype=np.float32)
        if not np.isfinite(stored[0]):
            raise ValueError("the intercept does not fit a float32")
        return encode(codes, bits, g) | {"intercept": stored}

    return Scheme(quantize_, uses_margin, refines=True)


SCHEMES = {
    "window": Scheme(_window_quantize, uses_margin=True, refines=False),
    "affine": _sound_scheme(affine_grid, affine_encode, uses_margin=True),
    "pow2": _sound_scheme(pow2_grid, pow2_encode, uses_margin=False),
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
    both need ``calibration`` = (X, y), the training data.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; known: " + ", ".join(SCHEMES))
    spec = SCHEMES[scheme]
    if coef.ndim != 1 or len(coef) != len(feature_names):
        raise ValueError(f"coef must be 1-D with one value per feature, got shape {coef.shape}")
    if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
        raise ValueError("coef and intercept must be finite")
    if not (isinstance(bits, (int, np.integer)) and 2 <= bits <= 16):
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}")
    if spec.uses_margin and not (margin is not None and margin > 0):
        raise ValueError(f"scheme {scheme} needs a margin > 0, got {margin!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if spec.refines and (refit_intercept or rounding == "error_aware"):
        calibration = _check_calibration(calibration, len(coef))
    arrays = spec.quantize(
        coef, float(intercept), int(bits), margin, rounding, bool(refit_intercept), calibration
    )
    return QuantizedModel(scheme, int(bits), tuple(feature_names), arrays)


def _check_calibration(calibration, n_features):
    if calibration is None:
        raise ValueError("refit_intercept and error-aware rounding need calibration=(X, y)")
    X, y = (np.asarray(a, dtype=np.float64) for a in calibration)
    if X.ndim != 2 or X.shape[1] != n_features or y.shape != (X.shape[0],) or len(y) == 0:
        raise ValueError(
            f"calibration must be X of shape (m, {n_features}) and y of shape (m,), "
            f"got {X.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("calibration data must be finite")
    return X, y
