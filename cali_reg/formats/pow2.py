"""``pow2``: a signed code and a power-of-two scale per coefficient.

Layout (n features): ``codes`` ceil(n * bits / 8) x uint8, the bits-bit codes in
two's complement packed end to end, most significant bit first, zero padding,
each in [-qmax, qmax] with qmax = 2**(bits - 1) - 1 (never -2**(bits - 1));
``exponents`` n x int8; ``intercept`` 1 x float32.
Coefficient i = code_i * 2**exponent_i, exact.

Every coefficient keeps the same relative precision, so each feature's
contribution to a prediction moves by the same small fraction whatever the
feature's units. ``optimal`` rounding also moves each exponent one step finer or
coarser while that lowers the training error (``optimal_grid``).
"""

from __future__ import annotations

import numpy as np

from cali_reg.errors import ModelFileError
from cali_reg.formats.common import (
    BITS,
    Format,
    FormatLimitError,
    codes_on_grid,
    pack_fields,
    packed_length,
    to_signed,
    unpack_fields,
)
from cali_reg.lattice import TIE, Grid, closest_codes, costs, quadratic_cost, round_codes

EXPONENTS = np.iinfo(np.int8)
MAX_DESCENT_ROUNDS = 10  # exponent coordinate descent: passes over the coefficients


def layout(n: int, bits: int) -> dict:
    return {
        "codes": (np.dtype(np.uint8), packed_length(n, bits)),
        "exponents": (np.dtype(np.int8), n),
        "intercept": (np.dtype(np.float32), 1),
    }


def grid(coef, bits: int, settings: dict | None = None) -> Grid:
    """Each coefficient c gets the smallest exponent e with |c| <= qmax * 2**e.

    c / 2**e then lies in (qmax/2, qmax] in magnitude, and the relative error of
    nearest rounding is below 1/qmax for every coefficient, however small.
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
        raise FormatLimitError(f"a coefficient is above {qmax} * 2**127, too large for pow2")
    return grid_of(e, bits)


def grid_of(exponents: np.ndarray, bits: int) -> Grid:
    qmax, n = 2 ** (bits - 1) - 1, len(exponents)
    return Grid(
        np.ldexp(1.0, exponents),
        np.full(n, -qmax),
        np.full(n, qmax),
        {"exponents": np.asarray(exponents).astype(np.int8)},
    )


def optimal_grid(coef, bits: int, calibration, intercept=None) -> tuple[Grid, np.ndarray]:
    """The grid and codes with the lowest training error found by exponent descent.

    Starts from ``grid`` with its exact best codes, then tries each coefficient's
    exponent one step finer (its code may clip at +-qmax) and one step coarser,
    re-solving the codes exactly, and keeps a move only if it lowers the cost by
    more than ``TIE``: correlated coefficients then compensate for each other's
    rounding. At most ``MAX_DESCENT_ROUNDS`` passes, in a fixed order.
    """
    coef = np.asarray(coef, dtype=np.float64)
    gram, cross = quadratic_cost(coef, *calibration, intercept)
    g0 = grid(coef, bits)
    codes = round_codes(g0, coef, "optimal", calibration, intercept)
    best = float(costs(codes * g0.step - coef, gram, cross)[0])
    exponents = g0.stored["exponents"].astype(np.int64)
    for _ in range(MAX_DESCENT_ROUNDS):
        moved = False
        for i in range(len(coef)):
            for move in (-1, 1):
                trial = exponents.copy()
                trial[i] += move
                if not EXPONENTS.min <= trial[i] <= EXPONENTS.max:
                    continue
                g = grid_of(trial, bits)
                found = closest_codes(g, coef, gram, cross, best)
                if found is None:
                    continue
                cost = float(costs(found * g.step - coef, gram, cross)[0])
                if cost < best - TIE * abs(best):
                    g0, codes, best, exponents, moved = g, found, cost, trial, True
        if not moved:
            break
    return g0, codes


def encode(coef, intercept, bits: int, calibration, settings: dict) -> dict:
    g, codes, stored = codes_on_grid(
        coef, intercept, bits, calibration, settings, grid, search=optimal_grid
    )
    fields = np.asarray(codes, dtype=np.int64) & (2**bits - 1)  # two's complement
    return {"codes": pack_fields(fields, bits)} | g.stored | {"intercept": stored}


def decode(arrays: dict, bits: int, n: int) -> tuple[np.ndarray, float]:
    codes = to_signed(unpack_fields(arrays["codes"], bits, n), bits)
    if np.any(codes < -(2 ** (bits - 1) - 1)):
        raise ModelFileError(f"a code is outside the symmetric {bits}-bit range")
    coef = np.ldexp(codes.astype(np.float64), arrays["exponents"].astype(np.int64))
    return coef, arrays["intercept"][0]


FORMAT = Format(
    layout,
    encode,
    decode,
    BITS,
    ("rounding", "refit_intercept"),
    "pow2",
)
