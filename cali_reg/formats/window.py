"""``window``: the seed project's scheme, kept bit for bit for comparison.

Layout (n features, n + 1 parameters with the intercept last):
``codes`` n + 1 x uint8 (uint16 above 8 bits), ``min`` n + 1 x float32,
``scale`` n + 1 x float32; parameter = code * scale + min, computed in float32.

Every parameter p gets its own window [p - half_width, p + half_width]. Since p
sits at the centre of its own window, every code lands on the middle value and
the information lives in the stored float ``min``: not a quantiser, a baseline.
"""

from __future__ import annotations

import numpy as np

from cali_reg.errors import ModelFileError
from cali_reg.formats.common import BITS, Format, code_dtype


def layout(n: int, bits: int) -> dict:
    return {
        "codes": (code_dtype(bits), n + 1),
        "min": (np.dtype(np.float32), n + 1),
        "scale": (np.dtype(np.float32), n + 1),
    }


def encode(coef, intercept, bits: int, calibration, settings: dict) -> dict:
    """The seed's arrays; ``settings["half_width"]`` is each window's half-width."""
    params = np.append(np.asarray(coef, dtype=np.float64), intercept).astype(np.float32)
    half = np.float32(settings["half_width"])
    levels = np.float32(2**bits - 1)
    lo = params - half
    scale = (params + half - lo) / levels
    codes = np.round((params - lo) / scale).astype(code_dtype(bits))
    return {"codes": codes, "min": lo, "scale": scale}


def decode(arrays: dict, bits: int, n: int) -> tuple[np.ndarray, float]:
    if int(arrays["codes"].max()) >= 2**bits:
        raise ModelFileError(f"a code exceeds the {bits}-bit range")
    params = arrays["codes"].astype(np.float32) * arrays["scale"] + arrays["min"]
    return params[:-1], params[-1]


FORMAT = Format(layout, encode, decode, BITS, ("half_width",), "window (the seed's)")
