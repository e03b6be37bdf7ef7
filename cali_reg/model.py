"""The model files and inference: what serving a model needs, with numpy alone.

Two plain-JSON formats, never a pickle:

- the float model (``models/float.json``, written by the train stage): feature
  names, coefficients and intercept as float64 decimals;
- the quantised model (``models/quant.json``, format ``cali-reg/quantized-linear``):
  scheme (the name of its format in ``cali_reg.formats``), bits, feature names,
  and the small integer and float arrays that inference needs, each with its
  stored dtype. ``payload_bytes`` is their size.

``load_model`` reads either; a quantised file is checked against its format's
layout and decoded by its format's module. Both predict through
``linear_predict``, so the model that the evaluate stage scores is bit for bit
the model that is served.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cali_reg.errors import ModelFileError, UserError
from cali_reg.formats import FORMATS

FORMAT = "cali-reg/quantized-linear"
VERSION = 1
_DTYPES = {"uint8", "uint16", "int8", "int16", "float16", "float32", "float64"}
_ROW_GROUP = 64  # a multiple of every x86-64 OpenBLAS gemv kernel's row unrolling


def exact_predict(X, coef, intercept) -> np.ndarray:
    """``X @ coef + intercept`` with each row's sum correctly rounded (``math.fsum``).

    The same bits on every CPU and BLAS: the products are exact IEEE operations and
    the sum does not depend on an order of addition. For the figures the pipeline
    stores and hashes (the test predictions, the metrics), where a quantised model's
    power-of-two weights often put a prediction exactly on a rounding tie of the
    stored decimals, so that ``linear_predict``'s last-bit differences between BLAS
    kernels would change the file. About a microsecond per row; ``linear_predict``
    agrees with it to about 1e-14.
    """
    products = np.asarray(X, dtype=np.float64) * np.asarray(coef, dtype=np.float64)
    bias = float(intercept)
    return np.array([math.fsum((*row, bias)) for row in products.tolist()], dtype=np.float64)


def linear_predict(X, coef, intercept) -> np.ndarray:
    """``X @ coef + intercept`` as float64, the one prediction path of every model.

    One BLAS matrix-vector product, multithreaded, then an in-place add: at the
    speed of memory. BLAS kernels work on groups of rows and finish an odd-sized
    remainder another way, which moves the last bits; so the rows past the last
    multiple of ``_ROW_GROUP`` go through a zero-padded group of their own, and a
    row gets the same bits alone or in any batch (on one machine: another CPU may
    pick another kernel, a difference of about 1e-14).
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
        group[: n - head] = X[head:]
        out[head:] = (group @ coef)[: n - head]
    out += np.float64(intercept)
    return out


# --- the schema every model file carries ---------------------------------------------


class TrainingRange(NamedTuple):
    """Each feature's smallest and largest value in the training data, in feature order."""

    low: np.ndarray
    high: np.ndarray

    def to_dict(self) -> dict:
        return {"min": self.low.tolist(), "max": self.high.tolist()}


def training_range_of(X) -> TrainingRange:
    """The per-column range of the training rows ``X``."""
    X = np.asarray(X, dtype=np.float64)
    return TrainingRange(X.min(axis=0), X.max(axis=0))


def check_feature_names(names: object, n_coef: int | None = None) -> tuple[str, ...]:
    """The feature names as a tuple; ModelFileError for a list a model cannot be served by.

    They are the model's input schema: input columns are matched to coefficients by
    these names, so an empty or repeated name, or one name too many or too few for the
    coefficients, would make that match ambiguous or wrong.
    """
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
        raise ModelFileError("feature_names must be a non-empty list of strings")
    for i, name in enumerate(names):
        if not name.strip():
            raise ModelFileError(f"feature_names[{i}] is empty; each feature needs a name")
        if names.index(name) != i:
            raise ModelFileError(f"feature name {name!r} appears twice in feature_names")
    if n_coef is not None and n_coef != len(names):
        raise ModelFileError(
            f"feature_names holds {len(names)} names for {n_coef} coefficients; "
            "each coefficient needs exactly one name"
        )
    return tuple(names)


def training_range_from_dict(doc: object, n: int) -> TrainingRange | None:
    """The ``training_range`` of a model file (None if it has none); ModelFileError if malformed."""
    if doc is None:
        return None
    if not (
        isinstance(doc, dict)
        and set(doc) == {"min", "max"}
        and _finite_numbers(doc["min"], n)
        and _finite_numbers(doc["max"], n)
    ):
        raise ModelFileError(
            f'training_range must be {{"min": [...], "max": [...]}} with {n} finite '
            "numbers each, in feature order"
        )
    low, high = np.array(doc["min"], dtype=np.float64), np.array(doc["max"], dtype=np.float64)
    if np.any(low > high):
        raise ModelFileError("training_range: a feature's min is above its max")
    return TrainingRange(low, high)


def _check_rows(X, feature_names) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise UserError(
            f"expected rows of {len(feature_names)} features "
            f"({', '.join(feature_names)}), got shape {X.shape}"
        )
    return X


# --- the float model -----------------------------------------------------------


class FloatModel(NamedTuple):
    """The fitted float64 weights, as the train stage saves them beside the estimator."""

    feature_names: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    training_range: TrainingRange | None = None
    scheme = "float64"
    bits = 64

    @property
    def payload_bytes(self) -> int:
        """Bytes of the float64 coefficients and intercept."""
        return int(self.coef.nbytes + np.float64(self.intercept).nbytes)

    def predict(self, X) -> np.ndarray:
        return linear_predict(_check_rows(X, self.feature_names), self.coef, self.intercept)

    def to_dict(self) -> dict:
        doc = {
            "feature_names": list(self.feature_names),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
        }
        if self.training_range is not None:
            doc["training_range"] = self.training_range.to_dict()
        return doc


def float_from_dict(doc: object) -> FloatModel:
    """A FloatModel from ``FloatModel.to_dict`` output; ModelFileError if anything is off."""
    names = doc.get("feature_names") if isinstance(doc, dict) else None
    coef = doc.get("coef") if isinstance(doc, dict) else None
    names = check_feature_names(names, len(coef) if isinstance(coef, list) else None)
    if not (
        _finite_numbers(doc.get("coef"), len(names)) and _finite_numbers([doc.get("intercept")], 1)
    ):
        raise ModelFileError(
            f"it does not hold {len(names)} finite coefficients and a finite intercept"
        )
    return FloatModel(
        names,
        np.array(doc["coef"], dtype=np.float64),
        float(doc["intercept"]),
        training_range_from_dict(doc.get("training_range"), len(names)),
    )


def _finite_numbers(values, n: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == n
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
    )


# --- the quantised model ---------------------------------------------------------


class QuantizedModel:
    """A scheme's stored arrays, checked against its layout and decoded once.

    A plain class, not a dataclass: importing dataclasses and building one cost the
    predictor and every stage a few milliseconds of start-up.
    """

    __slots__ = (
        "arrays",
        "bits",
        "coef",
        "feature_names",
        "intercept",
        "scheme",
        "training_range",
    )

    def __init__(
        self,
        scheme: str,
        bits: int,
        feature_names: tuple[str, ...],
        arrays: dict,
        training_range: TrainingRange | None = None,
    ):
        self.scheme, self.bits, self.feature_names, self.arrays = (
            scheme,
            bits,
            feature_names,
            arrays,
        )
        self.training_range = training_range
        _check_quantized(self)
        coef, intercept = FORMATS[scheme].decode(arrays, bits, len(feature_names))
        # Inference runs in float64 on the decoded weights: no per-call decoding.
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)

    def __repr__(self) -> str:
        return (
            f"QuantizedModel(scheme={self.scheme!r}, bits={self.bits}, "
            f"feature_names={self.feature_names!r})"
        )

    @property
    def payload_bytes(self) -> int:
        """Bytes of the stored arrays that inference needs, in their stored dtypes."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    def predict(self, X) -> np.ndarray:
        return linear_predict(_check_rows(X, self.feature_names), self.coef, self.intercept)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; floats as shortest round-trip decimals of their stored dtype."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "scheme": self.scheme,
            "bits": self.bits,
            "feature_names": list(self.feature_names),
            "arrays": {
                name: {"dtype": str(a.dtype), "values": a.tolist()}
                for name, a in self.arrays.items()
            },
        }
        if self.training_range is not None:
            doc["training_range"] = self.training_range.to_dict()
        return doc


def _check_quantized(model: QuantizedModel) -> None:
    fmt = FORMATS.get(model.scheme) if isinstance(model.scheme, str) else None
    if fmt is None:
        raise ModelFileError(f"unknown scheme {model.scheme!r}; known: " + ", ".join(FORMATS))
    if not (_is_int(model.bits) and model.bits in fmt.bits):
        raise ModelFileError(
            f"bits = {model.bits!r} must be an integer from {fmt.bits.start} to "
            f"{fmt.bits.stop - 1} under scheme {model.scheme}"
        )
    check_feature_names(model.feature_names)
    layout = fmt.layout(len(model.feature_names), model.bits)
    if set(model.arrays) != set(layout):
        raise ModelFileError(
            f"scheme {model.scheme} needs arrays {sorted(layout)}, got {sorted(model.arrays)}"
        )
    for name, (dtype, length) in layout.items():
        arr = model.arrays[name]
        if arr.dtype != dtype or arr.shape != (length,):
            raise ModelFileError(
                f"array {name!r} must be {length} x {dtype}, got {arr.shape} x {arr.dtype}"
            )
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelFileError(f"array {name!r} holds a NaN or infinity")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def quantized_from_dict(doc: object) -> QuantizedModel:
    """Rebuild and validate a model from ``to_dict`` output; ModelFileError if anything is off."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise ModelFileError(
            f"format version {doc.get('version')!r} is not supported "
            f"(this code reads version {VERSION}); re-run 'dvc repro'"
        )
    try:
        arrays = {}
        for name, spec in doc["arrays"].items():
            if spec["dtype"] not in _DTYPES:
                raise ModelFileError(f"array {name!r} has unsupported dtype {spec['dtype']!r}")
            values = spec["values"]
            if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ModelFileError(f"array {name!r} must be a list of numbers")
            arrays[name] = _exact_array(values, np.dtype(spec["dtype"]), name)
        names = check_feature_names(doc["feature_names"])
        return QuantizedModel(
            doc["scheme"],
            doc["bits"],
            names,
            arrays,
            training_range_from_dict(doc.get("training_range"), len(names)),
        )
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


# --- files -------------------------------------------------------------------------

Model = FloatModel | QuantizedModel


def dumps(model: Model) -> str:
    """The model file's text: indented JSON in a fixed key order."""
    return json.dumps(model.to_dict(), indent=2) + "\n"


def from_dict(doc: object) -> Model:
    """Either model from its dict: a quantised model has a ``format`` key."""
    if isinstance(doc, dict) and "format" in doc:
        return quantized_from_dict(doc)
    if isinstance(doc, dict) and "coef" in doc:
        return float_from_dict(doc)
    raise ModelFileError(
        f"not a model file: neither a {FORMAT} file nor a float model (coef, intercept)"
    )


def load_model(path: Path | str, expect: type | None = None) -> Model:
    """Read a model file; any problem is one ModelFileError line naming the file.

    With ``expect`` (FloatModel or QuantizedModel), a file of the other kind is refused.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing: run 'dvc repro' to build it") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not a model file") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read it ({err.strerror})") from None
    if not data.lstrip().startswith(b"{"):
        # CSV rows, a picture, a pickle: not a damaged model but another kind of file
        raise ModelFileError(
            f"{path} is not a model file (a cali-reg model is a JSON object, as "
            "models/quant.json or models/float.json); give --model the model's path"
        )
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(
            f"{path} is corrupt or truncated ({err}); re-run 'dvc repro' to rebuild it"
        ) from None
    try:
        model = from_dict(doc)
        if expect is not None and not isinstance(model, expect):
            raise ModelFileError(f"not a {expect.__name__} file")
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return model
