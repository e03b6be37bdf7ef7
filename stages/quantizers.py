"""Quantisation of a linear model's parameters, and inference from the result.

Pure numpy: no scikit-learn, no file access except in ``load``/``dumps`` at the
boundary. The quantize stage, the evaluate stage and the predictor all share it,
so the model that is scored is bit for bit the model that is served.

A quantised model is a ``QuantizedModel``: the scheme's name, the bit width, the
feature names in order, and a dict of small numpy arrays in the dtypes that are
stored. Only those arrays are needed for inference; ``payload_bytes`` is the sum
of their sizes.

Schemes (``SCHEMES``): ``window``, the seed project's, kept for comparison;
``affine``, per-tensor with an integer zero point; ``pow2``, a power-of-two
scale per coefficient. The last two keep the intercept as a float32, can re-fit
it after quantising the coefficients, and can round error-aware.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.common import UserError

FORMAT = "cali-reg/quantized-linear"
VERSION = 1
_DTYPES = {"uint8", "uint16", "int8", "int16", "float32", "float64"}


class ModelFileError(UserError):
    """A quantised model file that cannot be trusted: corrupt, truncated, or foreign."""


def code_dtype(bits: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``bits``-bit codes."""
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


# --- bit packing ------------------------------------------------------------
# The sound schemes store their codes packed end to end, so a 4-bit code costs
# half a byte in the payload and in the file alike.

def packed_length(n: int, bits: int) -> int:
    """Bytes that ``n`` fields of ``bits`` bits take when packed end to end."""
    return -(-n * bits // 8)


def pack_fields(fields, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit integers end to end, most significant bit first."""
    fields = np.asarray(fields, dtype=np.int64)
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((fields[:, None] >> shifts) & 1).astype(np.uint8).ravel())


def unpack_fields(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``pack_fields``; the padding bits after the last field must be zero."""
    flat = np.unpackbits(np.asarray(packed, dtype=np.uint8))
    if flat[n * bits:].any():
        raise ModelFileError("packed codes have non-zero padding bits")
    weights = np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return flat[:n * bits].reshape(n, bits).astype(np.int64) @ weights


# --- the seed's scheme -------------------------------------------------------

def quantize_window(coef, intercept, bits, margin):
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


def dequantize_window(arrays, bits):
    if int(arrays["codes"].max()) >= 2**bits:
        raise ModelFileError(f"a code exceeds the {bits}-bit range")
    params = arrays["codes"].astype(np.float32) * arrays["scale"] + arrays["min"]
    return params[:-1], params[-1]


def _window_layout(n_features, bits):
    n = n_features + 1
    return {"codes": (code_dtype(bits), n), "min": (np.dtype(np.float32), n),
            "scale": (np.dtype(np.float32), n)}


# --- the sound schemes: coefficients on an integer grid ----------------------

@dataclass(frozen=True)
class Grid:
    """Where each coefficient may go: ``code * step`` with an integer code in [lo, hi]."""
    step: np.ndarray    # float64, one per coefficient
    lo: np.ndarray      # int64, one per coefficient
    hi: np.ndarray
    stored: dict        # the arrays that define the grid (scale and zero point, exponents)


def affine_grid(coef, bits, margin) -> Grid:
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
    return Grid(np.full(n, float(scale)), np.full(n, -zero_point),
                np.full(n, levels - zero_point),
                {"scale": np.array([scale], dtype=np.float32),
                 "zero_point": np.array([zero_point], dtype=code_dtype(bits))})


def affine_encode(codes, bits, grid: Grid) -> dict:
    return {"codes": pack_fields(codes + int(grid.stored["zero_point"][0]), bits)} | grid.stored


def affine_decode(arrays, bits, n) -> np.ndarray:
    scale, zero_point = arrays["scale"][0], int(arrays["zero_point"][0])
    if not scale > 0:
        raise ModelFileError("array 'scale' must be positive")
    if zero_point >= 2**bits:
        raise ModelFileError(f"the zero point exceeds the {bits}-bit range")
    return (unpack_fields(arrays["codes"], bits, n) - zero_point) * np.float64(scale)


def _affine_layout(n, bits):
    return {"codes": (np.dtype(np.uint8), packed_length(n, bits)),
            "scale": (np.dtype(np.float32), 1), "zero_point": (code_dtype(bits), 1)}


EXPONENTS = np.iinfo(np.int8)  # pow2 exponents are stored as int8


def pow2_grid(coef, bits, margin=None) -> Grid:
    """Per-coefficient power-of-two scale, signed codes in [-qmax, qmax], qmax = 2**(bits-1) - 1.

    Each coefficient c gets the smallest exponent e with |c| <= qmax * 2**e, so
    c / 2**e lies in (qmax/2, qmax] in magnitude and the relative error is below
    1/qmax for every coefficient, however small: each feature's contribution to
    the prediction moves by the same small fraction, whatever the feature's units.
    ``margin`` is not used.
    """
    qmax = 2**(bits - 1) - 1
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
    return Grid(np.ldexp(1.0, e), np.full(n, -qmax), np.full(n, qmax),
                {"exponents": e.astype(np.int8)})


def pow2_encode(codes, bits, grid: Grid) -> dict:
    fields = np.asarray(codes, dtype=np.int64) & (2**bits - 1)  # two's complement
    return {"codes": pack_fields(fields, bits)} | grid.stored


def pow2_decode(arrays, bits, n) -> np.ndarray:
    fields = unpack_fields(arrays["codes"], bits, n)
    codes = np.where(fields >= 2**(bits - 1), fields - 2**bits, fields)
    if np.any(codes < -(2**(bits - 1) - 1)):
        raise ModelFileError(f"a code is outside the symmetric {bits}-bit range")
    return np.ldexp(codes.astype(np.float64), arrays["exponents"].astype(np.int64))


def _pow2_layout(n, bits):
    return {"codes": (np.dtype(np.uint8), packed_length(n, bits)),
            "exponents": (np.dtype(np.int8), n)}


# --- rounding and the intercept of the sound schemes --------------------------

ROUNDINGS = ("nearest", "error_aware")
MAX_SEARCH_COEFS = 16  # error-aware rounding tries 2**n roundings


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
        raise ValueError(f"error-aware rounding tries 2**n roundings; n = {len(t)} is above "
                         f"{MAX_SEARCH_COEFS}")
    floor = np.clip(np.floor(t), grid.lo, grid.hi)
    ceil = np.clip(np.ceil(t), grid.lo, grid.hi)
    up = (np.arange(2**len(t))[:, None] >> np.arange(len(t))) & 1
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
    quantize: object    # (coef, intercept, bits, margin, rounding, refit, calibration) -> arrays
    dequantize: object  # (arrays, bits, n_features) -> (coef, intercept)
    layout: object      # (n_features, bits) -> {array name: (dtype, length)}
    uses_margin: bool
    refines: bool       # honours rounding= and refit_intercept=


def _window_scheme() -> Scheme:
    return Scheme(
        quantize=lambda coef, intercept, bits, margin, *ignored:
            quantize_window(coef, intercept, bits, margin),
        dequantize=lambda arrays, bits, n: dequantize_window(arrays, bits),
        layout=_window_layout, uses_margin=True, refines=False)


def _sound_scheme(grid, encode, decode, layout, uses_margin) -> Scheme:
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

    def dequantize_(arrays, bits, n):
        return decode(arrays, bits, n), arrays["intercept"][0]

    def layout_(n, bits):
        return layout(n, bits) | {"intercept": (np.dtype(np.float32), 1)}

    return Scheme(quantize_, dequantize_, layout_, uses_margin, refines=True)


SCHEMES = {
    "window": _window_scheme(),
    "affine": _sound_scheme(affine_grid, affine_encode, affine_decode, _affine_layout,
                            uses_margin=True),
    "pow2": _sound_scheme(pow2_grid, pow2_encode, pow2_decode, _pow2_layout,
                          uses_margin=False),
}


# --- the model --------------------------------------------------------------

@dataclass(frozen=True)
class QuantizedModel:
    scheme: str
    bits: int
    feature_names: tuple
    arrays: dict = field(repr=False)

    def __post_init__(self):
        _check_model(self)
        coef, intercept = SCHEMES[self.scheme].dequantize(
            self.arrays, self.bits, len(self.feature_names))
        # Inference runs in float64 on the dequantised weights: one matrix-vector
        # product, no per-call dequantisation.
        object.__setattr__(self, "coef", np.asarray(coef, dtype=np.float64))
        object.__setattr__(self, "intercept", float(intercept))

    @property
    def payload_bytes(self) -> int:
        """Bytes of the stored arrays that inference needs, in their stored dtypes."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise UserError(f"expected rows of {len(self.feature_names)} features "
                            f"({', '.join(self.feature_names)}), got shape {X.shape}")
        return linear_predict(X, self.coef, self.intercept)


def linear_predict(X, coef, intercept) -> np.ndarray:
    """``X @ coef + intercept`` as float64, the one prediction path of both models.

    One BLAS matrix-vector product, multithreaded, then an in-place add: at the
    speed of memory, like a bare ``X @ w + b``. BLAS kernels work on groups of
    rows and finish an odd-sized remainder another way, which moves the last
    bits; so the rows past the last multiple of ``_ROW_GROUP`` go through a
    zero-padded group of their own, and a row gets the same bits alone, in any
    batch, from CSV or JSON lines (on one machine: another CPU may pick another
    kernel, a difference of about 1e-14 that the 6-decimal files never show).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    n = len(X)
    head = n - n % _ROW_GROUP
    out = np.empty(n)
    if head:
        np.matmul(X[:head], coef, out=out[:head])
    if head < n:
        group = np.zeros((_ROW_GROUP, X.shape[1]))
        group[:n - head] = X[head:]
        out[head:] = (group @ coef)[:n - head]
    out += np.float64(intercept)
    return out


_ROW_GROUP = 64  # a multiple of every x86-64 OpenBLAS gemv kernel's row unrolling


def quantize(coef, intercept, *, scheme, bits, feature_names, margin=None, rounding="nearest",
             refit_intercept=False, calibration=None) -> QuantizedModel:
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
    arrays = spec.quantize(coef, float(intercept), int(bits), margin, rounding,
                           bool(refit_intercept), calibration)
    return QuantizedModel(scheme, int(bits), tuple(feature_names), arrays)


def _check_calibration(calibration, n_features):
    if calibration is None:
        raise ValueError("refit_intercept and error-aware rounding need calibration=(X, y)")
    X, y = (np.asarray(a, dtype=np.float64) for a in calibration)
    if X.ndim != 2 or X.shape[1] != n_features or y.shape != (X.shape[0],) or len(y) == 0:
        raise ValueError(f"calibration must be X of shape (m, {n_features}) and y of shape (m,), "
                         f"got {X.shape} and {y.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("calibration data must be finite")
    return X, y


def _check_model(model: QuantizedModel) -> None:
    if model.scheme not in SCHEMES:
        raise ModelFileError(f"unknown scheme {model.scheme!r}; known: " + ", ".join(SCHEMES))
    if not (isinstance(model.bits, int) and not isinstance(model.bits, bool)
            and 2 <= model.bits <= 16):
        raise ModelFileError(f"bits = {model.bits!r} must be an integer from 2 to 16")
    if not (model.feature_names and all(isinstance(n, str) for n in model.feature_names)):
        raise ModelFileError("feature_names must be a non-empty list of strings")
    layout = SCHEMES[model.scheme].layout(len(model.feature_names), model.bits)
    if set(model.arrays) != set(layout):
        raise ModelFileError(f"scheme {model.scheme} needs arrays {sorted(layout)}, "
                             f"got {sorted(model.arrays)}")
    for name, (dtype, length) in layout.items():
        arr = model.arrays[name]
        if arr.dtype != dtype or arr.shape != (length,):
            raise ModelFileError(f"array {name!r} must be {length} x {dtype}, "
                                 f"got {arr.shape} x {arr.dtype}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelFileError(f"array {name!r} holds a NaN or infinity")


# --- the file format --------------------------------------------------------

def to_dict(model: QuantizedModel) -> dict:
    """Plain JSON-ready dict; floats as shortest round-trip decimals of their stored dtype."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "scheme": model.scheme,
        "bits": model.bits,
        "feature_names": list(model.feature_names),
        "arrays": {name: {"dtype": str(a.dtype), "values": a.tolist()}
                   for name, a in model.arrays.items()},
    }


def dumps(model: QuantizedModel) -> str:
    return json.dumps(to_dict(model), indent=2) + "\n"


def from_dict(doc) -> QuantizedModel:
    """Rebuild and validate a model from ``to_dict`` output; ModelFileError if anything is off."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise ModelFileError(f"format version {doc.get('version')!r} is not supported "
                             f"(this code reads version {VERSION}); re-run 'dvc repro'")
    try:
        arrays = {}
        for name, spec in doc["arrays"].items():
            if spec["dtype"] not in _DTYPES:
                raise ModelFileError(f"array {name!r} has unsupported dtype {spec['dtype']!r}")
            values = spec["values"]
            if not isinstance(values, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ModelFileError(f"array {name!r} must be a list of numbers")
            arrays[name] = _exact_array(values, np.dtype(spec["dtype"]), name)
        return QuantizedModel(doc["scheme"], doc["bits"], tuple(doc["feature_names"]), arrays)
    except (KeyError, TypeError, AttributeError) as err:
        raise ModelFileError(f"malformed model file ({type(err).__name__}: {err})") from None


def _exact_array(values, dtype, name):
    """Convert to ``dtype`` only if no value changes (no silent wrap or rounding)."""
    wide = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # caught by the comparison below
        arr = wide.astype(dtype)
    if not np.array_equal(arr.astype(np.float64), wide, equal_nan=True):
        raise ModelFileError(f"array {name!r} holds values that do not fit {dtype}")
    return arr


def load(path) -> QuantizedModel:
    """Read a quantised model file; any problem is one ModelFileError line naming the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing: run 'dvc repro' to build it") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(f"{path} is corrupt or truncated ({err}); "
                             "re-run 'dvc repro' to rebuild it") from None
    try:
        return from_dict(doc)
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from None
