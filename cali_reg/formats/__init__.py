"""The quantised-model formats, one module each: byte layout, encoder and decoder together.

A quantised model file names its format (``scheme``); ``cali_reg.model`` loads it
through ``FORMATS``. Adding a format is its module and one line here.
"""

from cali_reg.formats import affine, e2_t4_fix12, e3_s8_f16, e3_t4_fix12, pow2, window
from cali_reg.formats.common import BITS, Format, FormatLimitError

FORMATS: dict[str, Format] = {
    "window": window.FORMAT,
    "affine": affine.FORMAT,
    "pow2": pow2.FORMAT,
    "e3_s8_f16": e3_s8_f16.FORMAT,
    "e3_t4_fix12": e3_t4_fix12.FORMAT,
    "e2_t4_fix12": e2_t4_fix12.FORMAT,
}

__all__ = ["BITS", "FORMATS", "Format", "FormatLimitError"]
