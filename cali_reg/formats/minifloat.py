"""What the minifloat formats share: ExMy codes under a shared exponent, the joint search.

Not a format itself: ``e3_s8_f16``, ``e3_t4_fix12`` and ``e2_t4_fix12`` are.

A code of ``bits`` = 1 + x + y bits holds a sign, x exponent bits E and y mantissa
bits m, packed in that order, most significant bit first. With T the shared
exponent of the top binade and s = T - (2**x - 2):

    value = (-1)**sign * m * 2**(s - y)                 if E = 0 (subnormal)
            (-1)**sign * (2**y + m) * 2**(s + E - 1 - y)  otherwise

an integer times a power of two, decoded exactly; no inf or NaN codes, and a
negative zero (sign 1, E 0, m 0) is never written, so every value has one code.

The encoder (``choose``) picks the codes and the intercept together, exactly, on
the training rows: for a few candidate top binades, sphere decoding over the 8
codes and the intercept's own alphabet, on a training objective that guards the
worst split (``RobustObjective``; docs/quantisation.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cali_reg.errors import ModelFileError
from cali_reg.formats.common import FormatLimitError, to_signed, unpack_fields
from cali_reg.lattice import closest_values

TOP_OFFSETS = (0, 1, -1, 2)  # candidate top binades, from max|coef|'s own, in search order
# The robust objective: training MSE rise + Z * 2 * sqrt(u'Hr u / n), n the test
# rows expected at split.test_size 0.2 (a quarter of the training rows). Z was
# fixed at 2 before any result was seen (docs/quantisation.md).
Z = 2.0
TEST_PER_TRAIN_ROW = 0.25
# Widest code: past 12 bits pow2 is as small for the same accuracy, and the exact
# search slows with the alphabet (2**bits values per coordinate).
MAX_BITS = 12


def code_values(bits: int, top: int, exp_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, fields): every valid code's value, ascending, and its bit field."""
    half = 2 ** (bits - 1)
    magnitude = _magnitude(np.arange(half, dtype=np.int64), bits, top, exp_bits)
    values = np.concatenate([-magnitude[:0:-1], magnitude])  # no negative zero
    fields = np.concatenate([(np.arange(half) | half)[:0:-1], np.arange(half)])
    return values, fields


def _magnitude(rest: np.ndarray, bits: int, top: int, exp_bits: int) -> np.ndarray:
    y = bits - 1 - exp_bits
    e, m = np.divmod(rest, 2**y)
    s = top - (2**exp_bits - 2)
    mantissa = np.where(e == 0, m, 2**y + m)
    exponent = np.where(e == 0, s - y, s + e - 1 - y)
    return np.ldexp(mantissa.astype(np.float64), exponent)


def decode_codes(packed: np.ndarray, bits: int, n: int, top: int, exp_bits: int) -> np.ndarray:
    """The coefficients from the packed code fields, exactly; ModelFileError on -0."""
    sign, rest = np.divmod(unpack_fields(packed, bits, n), 2 ** (bits - 1))
    if np.any((sign == 1) & (rest == 0)):
        raise ModelFileError("a code is a negative zero, which this format never writes")
    return np.where(sign == 1, -1.0, 1.0) * _magnitude(rest, bits, top, exp_bits)


def top_binade(coef) -> int:
    """T with 2**T <= max|coef| < 2**(T + 1) (T = 0 if every coefficient is 0)."""
    peak = float(np.max(np.abs(coef)))
    return math.frexp(peak)[1] - 1 if peak > 0 else 0


class RobustObjective:
    """Training MSE rise of (coef + d, intercept + delta), plus a guard for the worst split.

    cost(u) = u'Gu - 2u'b with u = (d, delta), G and b on the training rows with a
    column of ones for the intercept; penalty(u) = 2 * Z * sqrt(u'Hr u / n), Hr
    the mean of r**2 * x x' (r the float model's training residuals): the standard
    deviation of the test MSE's cross term on n test rows. It penalises moving
    predictions where the float model already errs most, which is where one
    outlying test row decides the worst split.
    """

    def __init__(self, coef, intercept: float, calibration):
        X, y = (np.asarray(a, dtype=np.float64) for a in calibration)
        m = len(y)
        xa = np.column_stack([X, np.ones(m)])
        self.ref = np.append(np.asarray(coef, dtype=np.float64), intercept)
        r = y - xa @ self.ref
        self.gram = xa.T @ xa / m
        self.cross = xa.T @ r / m
        self.hr = (xa * (r * r)[:, None]).T @ xa / m
        self.weight = 2 * Z / math.sqrt(m * TEST_PER_TRAIN_ROW)


def choose(
    coef,
    intercept: float,
    bits: int,
    exp_bits: int,
    calibration,
    intercept_grid: Callable[[int, float], np.ndarray | None],
) -> tuple[int, np.ndarray, float]:
    """(top, code fields, intercept) with the lowest robust training objective.

    For each candidate top binade, an exact joint search over the codes and the
    intercept's alphabet ``intercept_grid(top, intercept)`` (sorted values; None
    if that top cannot hold the model), the best total so far as the radius, so
    a poor candidate is dismissed in a few nodes. FormatLimitError if no
    candidate fits.
    """
    if calibration is None:
        raise ValueError("the minifloat formats choose their codes on calibration=(X, y)")
    objective = RobustObjective(coef, intercept, calibration)
    t0 = top_binade(coef)
    best, bound = None, math.inf
    for top in (t0 + k for k in TOP_OFFSETS):
        alphabet = intercept_grid(top, intercept)
        if alphabet is None:
            continue
        values, fields = code_values(bits, top, exp_bits)
        found = closest_values(
            [values] * len(coef) + [alphabet],
            objective.ref,
            objective.gram,
            objective.cross,
            bound,
            objective.hr,
            objective.weight,
        )
        if found is not None and found[1] < bound:
            idx, bound = found
            best = (top, fields[idx[:-1]], float(alphabet[idx[-1]]))
    if best is None:
        raise FormatLimitError(
            f"max|coef| {float(np.max(np.abs(coef))):.3g} and intercept {intercept:.3g} "
            "do not fit this format's range"
        )
    return best


# --- an int8 top and a float16 intercept -------------------------------------------

F16_MAX = float(np.finfo(np.float16).max)


def f16_grid(top: int, intercept: float) -> np.ndarray | None:
    """float16 values k * ulp, |k| <= 2048, ulp that of the intercept's binade.

    Every such value is a float16 (a multiple of a coarser step is exact in the
    finer binades below), so the alphabet is one uniform grid around the
    intercept. None if the top does not fit an int8 or the intercept a float16.
    """
    if not (-128 <= top <= 127 and abs(intercept) <= F16_MAX):
        return None
    binade = max(math.frexp(abs(intercept))[1] - 1, -14) if intercept else -14
    values = np.arange(-2048, 2049) * math.ldexp(1.0, binade - 10)
    return values[np.abs(values) <= F16_MAX]


# --- a 4-bit top and a 12-bit fixed-point intercept, in one 2-byte header -------------

T4_RANGE = range(-8, 8)
FIX12_RANGE = range(-2048, 2048)
FIX12_SHIFT = -4  # the intercept's step is 2**(T - 4)


def fix12_grid(top: int, intercept: float) -> np.ndarray | None:
    """Every intercept k * 2**(top - 4), k a 12-bit integer; None if out of range."""
    step = math.ldexp(1.0, top + FIX12_SHIFT)
    if top not in T4_RANGE or not abs(intercept) < (FIX12_RANGE.stop - 1) * step:
        return None
    return np.arange(FIX12_RANGE.start, FIX12_RANGE.stop) * step


def t4_fix12_header(top: int, intercept: float) -> int:
    """The 16-bit header: T as 4-bit two's complement, then k as 12-bit two's complement."""
    k = int(math.ldexp(intercept, -(top + FIX12_SHIFT)))
    return (top % 16) << 12 | (k % 4096)


def read_t4_fix12(header: int) -> tuple[int, float]:
    """(top, intercept) from a 16-bit header."""
    top = int(to_signed(np.array([header >> 12]), 4)[0])
    k = int(to_signed(np.array([header % 4096]), 12)[0])
    return top, math.ldexp(float(k), top + FIX12_SHIFT)
