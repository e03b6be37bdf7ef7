"""Choosing the quantised model: which format, how many bits, and its codes.

Pure numpy, no file access. Each format (``cali_reg.formats``) encodes its own
codes; this module checks the inputs at the boundary, measures a model's training
R² loss, and picks the model the quantize stage saves (``quantize_within``): the
smallest payload whose training R² loss is within ``margin``, the accuracy budget.
"""

from __future__ import annotations

import numpy as np

from cali_reg.formats import BITS, FORMATS, FormatLimitError
from cali_reg.lattice import TIE
from cali_reg.model import QuantizedModel

AUTO = "auto"  # scheme or bits chosen by margin
ROUNDINGS = ("nearest", "error_aware", "optimal")
# The params a format may read (``Format.reads``), with what a call gets if it does
# not say: plain rounding, and no default for the grid sizes.
SETTINGS = {"padding": None, "half_width": None, "rounding": "nearest", "refit_intercept": False}


def quantize(
    coef,
    intercept,
    *,
    scheme: str,
    bits: int,
    feature_names,
    calibration=None,
    **settings,
) -> QuantizedModel:
    """The model of format ``scheme`` at ``bits`` bits, its codes chosen on ``calibration``.

    ``calibration`` = (X, y) is the training data, needed by every format but
    ``window`` and plain rounding; ``settings`` are the params of ``SETTINGS`` that
    the format reads (``Format.reads``); the others are ignored.
    ValueError for a bad argument; FormatLimitError if the model does not fit
    the format's range.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if scheme not in FORMATS:
        raise ValueError(f"unknown scheme {scheme!r}; known: " + ", ".join(FORMATS))
    fmt = FORMATS[scheme]
    if coef.ndim != 1 or len(coef) != len(feature_names):
        raise ValueError(f"coef must be 1-D with one value per feature, got shape {coef.shape}")
    if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
        raise ValueError("coef and intercept must be finite")
    if not (isinstance(bits, (int, np.integer)) and bits in fmt.bits):
        raise ValueError(
            f"bits must be an integer from {fmt.bits.start} to {fmt.bits.stop - 1} "
            f"under {scheme}, got {bits!r}"
        )
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown setting {sorted(unknown)[0]!r}; known: " + ", ".join(SETTINGS))
    used = {key: settings.get(key, SETTINGS[key]) for key in fmt.reads}
    for key in ("padding", "half_width"):
        if key in used and not (used[key] is not None and used[key] > 0):
            raise ValueError(f"scheme {scheme} needs {key} > 0, got {used[key]!r}")
    if used.get("rounding", "optimal") not in ROUNDINGS:
        raise ValueError(
            f"rounding must be one of {', '.join(ROUNDINGS)}, got {used['rounding']!r}"
        )
    if calibration is not None:
        calibration = _check_calibration(calibration, len(coef))
    arrays = fmt.encode(coef, float(intercept), int(bits), calibration, used)
    return QuantizedModel(scheme, int(bits), tuple(feature_names), arrays)


def _check_calibration(calibration, n_features):
    if calibration is None:
        raise ValueError("the codes are chosen on training data: pass calibration=(X, y)")
    X, y = (np.asarray(a, dtype=np.float64) for a in calibration)
    if X.ndim != 2 or X.shape[1] != n_features or y.shape != (X.shape[0],) or len(y) == 0:
        raise ValueError(
            f"calibration must be X of shape (m, {n_features}) and y of shape (m,), "
            f"got {X.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("calibration data must be finite")
    return X, y


def training_loss(qmodel: QuantizedModel, coef, intercept: float, X, y) -> float:
    """R² of the float model (``coef``, ``intercept``) minus R² of ``qmodel``, on (X, y).

    The rise in MSE is computed from the change in prediction, not as a
    difference of two MSEs, so that it keeps its digits when it is small.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    residual = y - X @ np.asarray(coef, dtype=np.float64) - intercept
    shift = X @ (qmodel.coef - coef) + (qmodel.intercept - intercept)
    rise = float(np.mean(shift * shift) - 2 * np.mean(residual * shift))
    return rise / float(np.mean((y - y.mean()) ** 2))


def payload_bytes(scheme: str, bits: int, n_features: int) -> int:
    """The payload of a ``scheme`` model at ``bits`` bits, from its layout alone."""
    layout = FORMATS[scheme].layout(n_features, bits)
    return int(sum(dtype.itemsize * length for dtype, length in layout.values()))


def candidates(scheme: str, bits: int | str, n_features: int) -> list[tuple[str, int]]:
    """The (scheme, bits) pairs that ``scheme`` and ``bits`` allow ("auto": any), smallest first.

    Ordered by payload, then by the registry's order, then by bits: a fixed order,
    so selection is deterministic.
    """
    schemes = list(FORMATS) if scheme == AUTO else [scheme]
    pairs = [
        (s, b)
        for s in schemes
        for b in (FORMATS[s].bits if bits == AUTO else [bits])
        if b in FORMATS[s].bits
    ]
    rank = {s: i for i, s in enumerate(FORMATS)}
    return sorted(pairs, key=lambda p: (payload_bytes(*p, n_features), rank[p[0]], p[1]))


def quantize_within(
    coef,
    intercept,
    *,
    scheme: str,
    bits: int | str,
    margin: float,
    feature_names,
    calibration=None,
    **settings,
) -> QuantizedModel:
    """The quantised model that the quantize stage saves.

    With ``scheme`` and ``bits`` both given, that model (``margin`` unused).
    Otherwise ("auto" for either or both) ``margin`` is the accuracy budget: of
    the models they allow, the one with the smallest payload whose R² on
    ``calibration`` (the training data) is at most ``margin`` below the float
    model's; among equal payloads, the lowest such loss. If none is within the
    margin, the one with the lowest loss. A format whose range the model does
    not fit is skipped.
    """
    kw = {"feature_names": feature_names, "calibration": calibration} | settings
    if scheme != AUTO and bits != AUTO:
        return quantize(coef, intercept, scheme=scheme, bits=bits, **kw)
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    if scheme != AUTO and scheme not in FORMATS:
        raise ValueError(f"unknown scheme {scheme!r}; known: " + ", ".join(FORMATS))
    if bits != AUTO and bits not in BITS:
        raise ValueError(
            f"bits must be {AUTO!r} or an integer from {BITS.start} to {BITS.stop - 1}"
        )
    X, y = _check_calibration(calibration, np.size(coef))
    pairs = candidates(scheme, bits, len(feature_names))
    if not pairs:
        raise ValueError(f"no format supports {bits} bits")
    tried, chosen_payload = [], None  # (loss, model) in candidate order
    for s, b in pairs:
        size = payload_bytes(s, b, len(feature_names))
        if chosen_payload is not None and size > chosen_payload:
            break
        try:
            qmodel = quantize(coef, intercept, scheme=s, bits=b, **kw)
        except FormatLimitError:
            continue
        loss = training_loss(qmodel, coef, intercept, X, y)
        tried.append((loss, qmodel))
        if loss <= margin and chosen_payload is None:
            chosen_payload = size
    if not tried:
        raise FormatLimitError("the model fits none of the formats allowed")
    if chosen_payload is not None:
        tried = [(loss, q) for loss, q in tried if q.payload_bytes == chosen_payload]
        tried = [(loss, q) for loss, q in tried if loss <= margin]
    return _most_accurate(tried)


def _most_accurate(tried: list[tuple[float, QuantizedModel]]) -> QuantizedModel:
    """The first model whose loss is the lowest, losses within ``TIE`` counting as equal.

    So that last-bit differences between machines cannot swap two near-equal models.
    """
    lowest = min(loss for loss, _ in tried)
    return next(q for loss, q in tried if loss <= lowest + TIE * max(abs(lowest), 1e-12))
