"""``e3_t4_fix12``: E3My minifloat codes, a 4-bit shared exponent, a 12-bit fixed-point intercept.

Layout (n features; bits = 1 + 3 + y, 4 to 12):

- ``codes``: ceil(n * bits / 8) x uint8, as in ``e3_s8_f16``;
- ``header``: 2 x uint8, 16 bits, most significant first: T, the top binade's
  exponent, as 4-bit two's complement (-8 to 7); then k, 12-bit two's complement.

Coefficients decode as ``cali_reg.formats.minifloat`` says with that T; the
intercept is k * 2**(T - 4), exact. 10 B at 8 bits (E3M4), 12 B at 10 (E3M6).
Range limits: the top binade within 2**-8 to 2**7 (the encoder tries max|coef|'s
own and its neighbours) and |intercept| below 2047 * 2**(T - 4); a model outside
them is refused in one line, and selection by margin skips the format.
"""

from __future__ import annotations

import numpy as np

from cali_reg.formats import minifloat as mf
from cali_reg.formats.common import (
    Format,
    FormatLimitError,
    pack_fields,
    packed_length,
    unpack_fields,
)

EXP_BITS = 3
NAME = "e3_t4_fix12"


def layout(n: int, bits: int) -> dict:
    return {
        "codes": (np.dtype(np.uint8), packed_length(n, bits)),
        "header": (np.dtype(np.uint8), 2),
    }


def encode(coef, intercept, bits: int, calibration, settings: dict) -> dict:
    return encode_t4(coef, intercept, bits, calibration, EXP_BITS, NAME)


def encode_t4(coef, intercept, bits: int, calibration, exp_bits: int, name: str) -> dict:
    """The arrays of a T4 + fix12 format with ``exp_bits`` exponent bits per code."""
    try:
        top, fields, b = mf.choose(coef, intercept, bits, exp_bits, calibration, mf.fix12_grid)
    except FormatLimitError as err:
        raise FormatLimitError(
            f"{name} cannot hold this model ({err}): it needs max|coef| within about "
            "2**-8 to 2**8 and |intercept| below 2**(T + 7); use e3_s8_f16 or pow2"
        ) from None
    return {
        "codes": pack_fields(fields, bits),
        "header": pack_fields([mf.t4_fix12_header(top, b)], 16),
    }


def decode(arrays: dict, bits: int, n: int) -> tuple[np.ndarray, float]:
    return decode_t4(arrays, bits, n, EXP_BITS)


def decode_t4(arrays: dict, bits: int, n: int, exp_bits: int) -> tuple[np.ndarray, float]:
    top, intercept = mf.read_t4_fix12(int(unpack_fields(arrays["header"], 16, 1)[0]))
    return mf.decode_codes(arrays["codes"], bits, n, top, exp_bits), intercept


FORMAT = Format(
    layout,
    encode,
    decode,
    range(1 + EXP_BITS, mf.MAX_BITS + 1),
    (),
    "e3_t4_fix12 (E3 minifloat codes; 4-bit exponent; 12-bit intercept)",
)
