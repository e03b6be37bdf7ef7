"""What the format modules share: the Format record, bit packing, and the limit error."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cali_reg.errors import ModelFileError, UserError
from cali_reg.lattice import refit_intercept, round_codes

# The code widths any format may use, 2 to 16 bits: one definition for the
# params, the loader, the sweep and the robustness stage.
BITS = range(2, 17)


class FormatLimitError(UserError, ValueError):
    """The model does not fit the format's range (a 4-bit scale, a fixed-point intercept).

    One line for the user; selection by margin skips the format instead.
    """


class Format(NamedTuple):
    """One quantised format: its byte layout, encoder and decoder, and what it reads.

    ``layout(n, bits)`` -> {array name: (dtype, length)}, the stored arrays in order;
    ``encode(coef, intercept, bits, calibration, settings)`` -> those arrays, chosen
    on ``calibration`` = (X, y), the training data; ``decode(arrays, bits, n)`` ->
    (coef, intercept) as float64, exactly; ``bits``: the code widths it supports;
    ``reads``: the quantize params (beyond scheme and bits) its encoder uses.
    """

    layout: Callable[[int, int], dict]
    encode: Callable[..., dict]
    decode: Callable[[dict, int, int], tuple[np.ndarray, float]]
    bits: range
    reads: tuple[str, ...]
    summary: str  # the format in a few words, for labels and docs


def code_dtype(bits: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``bits``-bit codes."""
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def packed_length(n: int, bits: int) -> int:
    """Bytes that ``n`` fields of ``bits`` bits take when packed end to end."""
    return -(-n * bits // 8)


def pack_fields(fields, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit integers end to end, most significant bit first.

    A 4-bit code then costs half a byte in the payload and in the file alike.
    """
    fields = np.asarray(fields, dtype=np.int64)
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((fields[:, None] >> shifts) & 1).astype(np.uint8).ravel())


def unpack_fields(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Unsigned ``bits``-bit integers packed end to end, most significant bit first.

    The padding bits after the last field must be zero.
    """
    flat = np.unpackbits(np.asarray(packed, dtype=np.uint8))
    if flat[n * bits :].any():
        raise ModelFileError("packed codes have non-zero padding bits")
    weights = np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return flat[: n * bits].reshape(n, bits).astype(np.int64) @ weights


def to_signed(fields: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement ``bits``-bit fields as signed integers."""
    fields = np.asarray(fields, dtype=np.int64)
    return np.where(fields >= 2 ** (bits - 1), fields - 2**bits, fields)


def stored_intercept_f32(intercept: float) -> np.ndarray:
    """The intercept as the one float32 it is stored as; ValueError if it overflows."""
    with np.errstate(over="ignore"):
        stored = np.array([intercept], dtype=np.float32)
    if not np.isfinite(stored[0]):
        raise FormatLimitError("the intercept does not fit a float32")
    return stored


def codes_on_grid(coef, intercept, bits: int, calibration, settings: dict, grid, search=None):
    """(grid, codes, stored float32 intercept) of a scheme whose coefficients sit on a grid.

    ``grid(coef, bits, settings) -> Grid``; ``search(coef, bits, calibration,
    intercept) -> (Grid, codes)``, if given, is what ``optimal`` rounding does
    instead of the exact codes on the fixed grid. With ``refit_intercept`` the
    intercept is re-fitted on ``calibration`` once the codes are chosen.
    """
    rounding, refit = settings["rounding"], settings["refit_intercept"]
    if calibration is None and (refit or rounding != "nearest"):
        raise ValueError(f"{rounding} rounding and refit_intercept need calibration=(X, y)")
    fixed = None if refit else float(np.float32(intercept))
    if rounding == "optimal" and search is not None:
        g, codes = search(coef, bits, calibration, fixed)
    else:
        g = grid(coef, bits, settings)
        codes = round_codes(g, coef, rounding, calibration, fixed)
    if refit:
        intercept = refit_intercept(codes * g.step, *calibration)
    return g, codes, stored_intercept_f32(intercept)
