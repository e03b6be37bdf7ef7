"""``e2_t4_fix12``: as ``e3_t4_fix12`` with 2 exponent bits per code, one more mantissa bit.

Layout (n features; bits = 1 + 2 + y, 8 to 12): ``codes`` ceil(n * bits / 8) x
uint8, each code's sign, 2 exponent bits and y mantissa bits packed end to end,
most significant bit first, zero padding; ``header`` 2 x uint8, T (4 bits) and
k (12 bits) as in ``e3_t4_fix12``. Coefficients decode as
``cali_reg.formats.minifloat`` says with x = 2; intercept = k * 2**(T - 4).

Four binades instead of eight: the large coefficients get a finer step, the
small ones (HouseAge, AveOccup) sit in the subnormal range. Offered from 8 bits
(E2M5, 10 B): below that those few subnormal steps are too coarse, and the
20-split losses are several times E3's (docs/quantisation.md). The same range
limits as ``e3_t4_fix12``.
"""

from __future__ import annotations

import numpy as np

from cali_reg.formats import minifloat as mf
from cali_reg.formats.common import Format
from cali_reg.formats.e3_t4_fix12 import decode_t4, encode_t4, layout

EXP_BITS = 2


def encode(coef, intercept, bits: int, calibration, settings: dict) -> dict:
    return encode_t4(coef, intercept, bits, calibration, EXP_BITS, "e2_t4_fix12")


def decode(arrays: dict, bits: int, n: int) -> tuple[np.ndarray, float]:
    return decode_t4(arrays, bits, n, EXP_BITS)


FORMAT = Format(
    layout,
    encode,
    decode,
    range(8, mf.MAX_BITS + 1),
    (),
    "e2_t4_fix12 (E2 minifloat codes; 4-bit exponent; 12-bit intercept)",
)
