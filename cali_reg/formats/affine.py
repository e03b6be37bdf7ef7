"""``affine``: per-tensor asymmetric codes with an integer zero point.

Layout (n features): ``codes`` ceil(n * bits / 8) x uint8, the unsigned bits-bit
codes packed end to end, most significant bit first, zero padding;
``scale`` 1 x float32; ``zero_point`` 1 x uint8 (uint16 above 8 bits);
``intercept`` 1 x float32. Coefficient i = (code_i - zero_point) * scale.
"""

from __future__ import annotations

import numpy as np

from cali_reg.errors import ModelFileError
from cali_reg.formats.common import (
    BITS,
    Format,
    FormatLimitError,
    code_dtype,
    codes_on_grid,
    pack_fields,
    packed_length,
    unpack_fields,
)
from cali_reg.lattice import Grid


def layout(n: int, bits: int) -> dict:
    return {
        "codes": (np.dtype(np.uint8), packed_length(n, bits)),
        "scale": (np.dtype(np.float32), 1),
        "zero_point": (code_dtype(bits), 1),
        "intercept": (np.dtype(np.float32), 1),
    }


def grid(coef, bits: int, settings: dict) -> Grid:
    """The grid over [min(coef, 0) - padding, max(coef, 0) + padding].

    The range always holds 0.0, which the zero point dequantises to exactly. The
    float32 scale is rounded up so that the range fits in 2**bits - 1 steps:
    every coefficient is then within half a step of a code.
    """
    padding = settings["padding"]
    levels = 2**bits - 1
    lo = min(float(np.min(coef)), 0.0) - padding
    hi = max(float(np.max(coef)), 0.0) + padding
    with np.errstate(over="ignore"):
        scale = np.float32((hi - lo) / levels)
    if scale < (hi - lo) / levels:
        scale = np.nextafter(scale, np.float32(np.inf))
    if not (np.isfinite(scale) and scale > 0):
        raise FormatLimitError("the coefficients' range does not fit a float32 scale")
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


def encode(coef, intercept, bits: int, calibration, settings: dict) -> dict:
    g, codes, stored = codes_on_grid(coef, intercept, bits, calibration, settings, grid)
    zero_point = int(g.stored["zero_point"][0])
    return {"codes": pack_fields(codes + zero_point, bits)} | g.stored | {"intercept": stored}


def decode(arrays: dict, bits: int, n: int) -> tuple[np.ndarray, float]:
    scale, zero_point = arrays["scale"][0], int(arrays["zero_point"][0])
    if not scale > 0:
        raise ModelFileError("array 'scale' must be positive")
    if zero_point >= 2**bits:
        raise ModelFileError(f"the zero point exceeds the {bits}-bit range")
    coef = (unpack_fields(arrays["codes"], bits, n) - zero_point) * np.float64(scale)
    return coef, arrays["intercept"][0]


FORMAT = Format(
    layout,
    encode,
    decode,
    BITS,
    ("padding", "rounding", "refit_intercept"),
    "affine",
)
