"""Quantisation of a linear model's parameters, and inference from the result.

Pure numpy: no scikit-learn, no file access except in ``load``/``dumps`` at the
boundary. The quantize stage, the evaluate stage and the predictor all share it,
so the model that is scored is bit for bit the model that is served.

A quantised model is a ``QuantizedModel``: the scheme's name, the bit width, the
feature names in order, and a dict of small numpy arrays in the dtypes that are
stored. Only those arrays are needed for inference; ``payload_bytes`` is the sum
of their sizes.
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


# --- schemes ----------------------------------------------------------------
# Each scheme maps (coef, intercept, bits, margin) to named arrays, and back to
# float weights. The parameter vector is ``coef ++ [intercept]``.

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
    params = arrays["codes"].astype(np.float32) * arrays["scale"] + arrays["min"]
    return params[:-1], params[-1]


def _window_layout(n_features, bits):
    n = n_features + 1
    return {"codes": (code_dtype(bits), n), "min": (np.dtype(np.float32), n),
            "scale": (np.dtype(np.float32), n)}


@dataclass(frozen=True)
class Scheme:
    quantize: object
    dequantize: object
    layout: object          # (n_features, bits) -> {array name: (dtype, length)}
    uses_margin: bool = True


SCHEMES = {
    "window": Scheme(quantize_window, dequantize_window, _window_layout),
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
        coef, intercept = SCHEMES[self.scheme].dequantize(self.arrays, self.bits)
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
    """``X @ coef + intercept``, summed one feature at a time in a fixed order.

    BLAS splits and fuses a dot product differently by CPU and batch size, which
    moves the last bits of a prediction. Separate elementwise products and sums,
    each rounded exactly by IEEE 754, give the same bits for a row wherever it is
    computed: in the evaluate stage, in a chunk of the predictor, on any machine.
    """
    X = np.asarray(X, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    out = np.empty(len(X))
    term = np.empty(min(len(X), _BLOCK_ROWS))
    # Block by block, so that the 8 strided column passes over a block hit the
    # cache instead of memory, and in place, with no temporary array per feature.
    for start in range(0, len(X), _BLOCK_ROWS):
        block = X[start:start + _BLOCK_ROWS]
        acc, tmp = out[start:start + len(block)], term[:len(block)]
        np.multiply(block[:, 0], coef[0], out=acc)
        for j in range(1, X.shape[1]):
            acc += np.multiply(block[:, j], coef[j], out=tmp)
        acc += np.float64(intercept)
    return out


_BLOCK_ROWS = 8192  # 8192 rows x 8 features x 8 bytes = 512 KiB, within a core's L2 cache


def quantize(coef, intercept, *, scheme, bits, margin, feature_names) -> QuantizedModel:
    """Quantise a linear model's parameters with the named scheme."""
    coef = np.asarray(coef, dtype=np.float64)
    if coef.ndim != 1 or len(coef) != len(feature_names):
        raise ValueError(f"coef must be 1-D with one value per feature, got shape {coef.shape}")
    if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
        raise ValueError("coef and intercept must be finite")
    arrays = SCHEMES[scheme].quantize(coef, float(intercept), bits, margin)
    return QuantizedModel(scheme, int(bits), tuple(feature_names), arrays)


def _check_model(model: QuantizedModel) -> None:
    if model.scheme not in SCHEMES:
        raise ModelFileError(f"unknown scheme {model.scheme!r}; known: " + ", ".join(SCHEMES))
    if not (isinstance(model.bits, int) and 2 <= model.bits <= 16):
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
        if name == "codes" and int(arr.max()) >= 2**model.bits:
            raise ModelFileError(f"a code exceeds the {model.bits}-bit range")


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
