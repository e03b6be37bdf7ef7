"""``e3_s8_f16``: E3My minifloat codes, one int8 shared exponent, a float16 intercept.

Layout (n features; bits = 1 + 3 + y, 4 to 12):

- ``codes``: ceil(n * bits / 8) x uint8, the n codes' fields (sign, 3 exponent
  bits, y mantissa bits) packed end to end, most significant bit first, zero padding;
- ``top``: 1 x int8, T, the exponent of the top binade;
- ``intercept``: 1 x float16.

Coefficients decode as ``cali_reg.formats.minifloat`` says, exactly. 12 B at
9 bits (E3M5). No range limit beyond int8 and float16: the fallback when a model
does not fit the 4-bit formats.
"""

from __future__ import annotations

import numpy as np

from cali_reg.formats import minifloat as mf
from cali_reg.formats.common import Format, pack_fields, packed_length

EXP_BITS = 3


def layout(n: int, bits: int) -> dict:
    return {
        "codes": (np.dtype(np.uint8), packed_length(n, bits)),
        "top": (np.dtype(np.int8), 1),
        "intercept": (np.dtype(np.float16), 1),
    }


def encode(coef, intercept, bits: int, calibration, settings: dict) -> dict:
    top, fields, b = mf.choose(coef, intercept, bits, EXP_BITS, calibration, mf.f16_grid)
    return {
        "codes": pack_fields(fields, bits),
        "top": np.array([top], dtype=np.int8),
        "intercept": np.array([b], dtype=np.float16),
    }


def decode(arrays: dict, bits: int, n: int) -> tuple[np.ndarray, float]:
    coef = mf.decode_codes(arrays["codes"], bits, n, int(arrays["top"][0]), EXP_BITS)
    return coef, float(arrays["intercept"][0])


FORMAT = Format(
    layout,
    encode,
    decode,
    range(1 + EXP_BITS, mf.MAX_BITS + 1),
    (),
    "e3_s8_f16 (E3 minifloat codes; int8 exponent; float16 intercept)",
)
