"""Choosing codes (cali_reg.quantize) and reading them back (cali_reg.model), on small models."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cali_reg import model as mdl
from cali_reg import quantize as qz
from cali_reg.errors import ModelFileError, UserError
from cali_reg.formats import FORMATS, FormatLimitError
from cali_reg.formats import pow2 as p2
from cali_reg.formats.common import pack_fields, packed_length, unpack_fields
from cali_reg.lattice import costs, quadratic_cost, round_codes

NAMES = tuple(f"f{i}" for i in range(5))


def random_model(seed, n=None):
    n = len(NAMES) if n is None else n
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, n), float(rng.normal(0, 10))


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
@pytest.mark.parametrize("margin", [0.01, 0.05, 0.5])
def test_window_codes_in_range_and_error_within_half_step(bits, margin):
    coef, intercept = random_model(bits * 100 + int(margin * 100))
    m = qz.quantize(
        coef, intercept, scheme="window", bits=bits, half_width=margin, feature_names=NAMES
    )
    codes = m.arrays["codes"]
    assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert codes.max() < 2**bits
    params = np.append(coef, intercept).astype(np.float32).astype(np.float64)
    restored = np.append(m.coef, m.intercept)
    step = m.arrays["scale"].astype(np.float64)
    # half a step, plus float32 rounding of the arithmetic itself
    assert np.all(
        np.abs(restored - params) <= step / 2 + 4 * np.spacing(np.float32(np.abs(params) + margin))
    )
    # margin honoured: each window is [p - margin, p + margin]
    np.testing.assert_allclose(m.arrays["min"], params - margin, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.arrays["scale"] * (2**bits - 1), 2 * margin, rtol=1e-3)


def test_window_reproduces_seed_arithmetic():
    # every parameter sits at the centre of its window: the ratio is 127.5 and float32 rounds to 128
    m = qz.quantize(
        [0.4487, -2e-6, 0.78],
        -37.0233,
        scheme="window",
        bits=8,
        half_width=0.05,
        feature_names=("a", "b", "c"),
    )
    assert m.arrays["codes"].tolist() == [128] * 4
    assert m.payload_bytes == 4 * 1 + 4 * 4 + 4 * 4


def test_more_bits_or_smaller_margin_means_smaller_error():
    coef, intercept = random_model(7)
    params = np.append(coef, intercept)

    def err(bits, margin):
        m = qz.quantize(
            coef, intercept, scheme="window", bits=bits, half_width=margin, feature_names=NAMES
        )
        return np.abs(np.append(m.coef, m.intercept) - params).max()

    assert err(8, 0.01) < err(8, 0.05)
    assert err(4, 0.05) >= err(8, 0.05)


def test_predict_is_dequantised_linear_model():
    coef, intercept = random_model(3)
    m = qz.quantize(coef, intercept, scheme="window", bits=8, half_width=0.05, feature_names=NAMES)
    X = np.random.default_rng(0).normal(size=(50, len(NAMES)))
    np.testing.assert_allclose(m.predict(X), X @ m.coef + m.intercept)
    with pytest.raises(UserError, match="expected rows of 5 features"):
        m.predict(X[:, :4])


def test_linear_predict_is_the_linear_model_for_any_batch_size():
    rng = np.random.default_rng(1)
    coef, intercept = rng.normal(0, 2, 8), -37.0233
    for n in (0, 1, 2, 1000):
        X = rng.normal(0, 100, size=(n, 8))
        X_before = X.copy()
        out = mdl.linear_predict(X, coef, intercept)
        assert out.dtype == np.float64 and out.shape == (n,)
        np.testing.assert_allclose(
            out, np.sum(X * coef, axis=1) + intercept, rtol=1e-12, atol=1e-10
        )
        np.testing.assert_array_equal(X, X_before)  # the input is never written to


def test_linear_predict_gives_a_row_the_same_bits_in_any_batch():
    rng = np.random.default_rng(4)
    coef, intercept = rng.normal(0, 2, 8), -37.0233
    X = rng.normal(0, 100, size=(3000, 8))
    batch = mdl.linear_predict(X, coef, intercept)
    for n in (*range(1, 70), 127, 128, 129, 1000, 2999):
        for start in (0, 1, 5, 3000 - n):
            np.testing.assert_array_equal(
                mdl.linear_predict(X[start : start + n], coef, intercept), batch[start : start + n]
            )
    # and in whatever memory layout the rows arrive
    np.testing.assert_array_equal(mdl.linear_predict(np.asfortranarray(X), coef, intercept), batch)


def test_file_round_trip_is_exact(tmp_path):
    coef, intercept = random_model(11)
    m = qz.quantize(coef, intercept, scheme="window", bits=12, half_width=0.02, feature_names=NAMES)
    path = tmp_path / "q.json"
    path.write_text(mdl.dumps(m))
    back = mdl.load_model(path)
    assert back.feature_names == NAMES and back.bits == 12
    for name, arr in m.arrays.items():
        assert back.arrays[name].dtype == arr.dtype
        np.testing.assert_array_equal(back.arrays[name], arr)
    assert mdl.dumps(back) == mdl.dumps(m)


def _saved(tmp_path, edit):
    coef, intercept = random_model(5)
    doc = mdl.QuantizedModel.to_dict(
        qz.quantize(coef, intercept, scheme="window", bits=8, half_width=0.05, feature_names=NAMES)
    )
    edit(doc)
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(version=99), "version 99 is not supported"),
        (lambda d: d.update(format="other"), "not a cali-reg/quantized-linear file"),
        (lambda d: d.update(scheme="zzz"), "unknown scheme 'zzz'"),
        (lambda d: d["arrays"]["codes"]["values"].pop(), "array 'codes' must be 6"),
        (lambda d: d["arrays"]["codes"].update(values=[300] * 6), "do not fit uint8"),
        (lambda d: d["arrays"]["codes"].update(dtype="uint16"), "array 'codes' must be 6 x uint8"),
        (lambda d: d.update(bits=4), "exceeds the 4-bit range"),
        (lambda d: d["arrays"]["min"].update(values=["x"] * 6), "must be a list of numbers"),
        (lambda d: d["arrays"].pop("scale"), "needs arrays"),
        (lambda d: d.pop("feature_names"), "malformed model file"),
    ],
)
def test_tampered_files_are_refused_with_one_line(tmp_path, edit, message):
    path = _saved(tmp_path, edit)
    with pytest.raises(ModelFileError, match=message) as info:
        mdl.load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_and_missing_files_are_refused(tmp_path):
    path = _saved(tmp_path, lambda d: None)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        mdl.load_model(path)
    with pytest.raises(ModelFileError, match="is missing"):
        mdl.load_model(tmp_path / "nope.json")


# --- the sound schemes: properties over random coefficient vectors ------------

SOUND = ("affine", "pow2")
PROPERTY = settings(max_examples=60, deadline=None)

# magnitudes from 1e-8 to 1e4, like a regression on features of very different units
coefficient = st.one_of(
    st.just(0.0),
    st.builds(
        lambda sign, m, e: sign * m * 10.0**e,
        st.sampled_from((-1.0, 1.0)),
        st.floats(1.0, 9.99),
        st.integers(-8, 3),
    ),
)
coef_vectors = st.lists(coefficient, min_size=1, max_size=8).map(np.array)
bit_widths = st.integers(2, 16)
margins = st.floats(1e-3, 1.0)


def names(n):
    return tuple(f"f{i}" for i in range(n))


def quantized(coef, scheme, bits, margin, **kw):
    """A model of ``scheme``; ``margin`` sizes the grid of the format that reads one."""
    sizes = {"padding": margin, "half_width": margin}
    return qz.quantize(
        coef, 1.5, scheme=scheme, bits=bits, feature_names=names(len(coef)), **sizes, **kw
    )


def signed_codes(m):
    """The integer codes of a sound-scheme model, read back from the packed bytes."""
    n = len(m.feature_names)
    fields = unpack_fields(m.arrays["codes"], m.bits, n)
    if m.scheme == "affine":
        return fields - int(m.arrays["zero_point"][0])
    return np.where(fields >= 2 ** (m.bits - 1), fields - 2**m.bits, fields)


def steps(m):
    if m.scheme == "affine":
        return np.full(len(m.feature_names), float(m.arrays["scale"][0]))
    return np.ldexp(1.0, m.arrays["exponents"].astype(int))


@PROPERTY
@given(coef=coef_vectors, scheme=st.sampled_from(SOUND), bits=bit_widths, margin=margins)
def test_sound_codes_in_range_and_error_within_half_step(coef, scheme, bits, margin):
    m = quantized(coef, scheme, bits, margin)
    codes = signed_codes(m)
    if scheme == "affine":
        fields = codes + int(m.arrays["zero_point"][0])
        assert fields.min() >= 0 and fields.max() <= 2**bits - 1
    else:
        assert np.abs(codes).max() <= 2 ** (bits - 1) - 1
    np.testing.assert_array_equal(m.coef, codes * steps(m))
    assert np.all(np.abs(m.coef - coef) <= steps(m) / 2 * (1 + 1e-12))
    assert m.payload_bytes == sum(a.nbytes for a in m.arrays.values())
    assert m.arrays["codes"].nbytes == -(-len(coef) * bits // 8)


@PROPERTY
@given(coef=coef_vectors, bits=bit_widths)
def test_pow2_relative_error_is_below_one_over_qmax(coef, bits):
    m = quantized(coef, "pow2", bits, None)
    qmax = 2 ** (bits - 1) - 1
    assert np.all(np.abs(m.coef - coef) <= np.abs(coef) / qmax)


@PROPERTY
@given(
    coef=coef_vectors,
    scheme=st.sampled_from(SOUND),
    bits=bit_widths,
    margin=margins,
    zeros=st.lists(st.integers(0, 7), min_size=1, max_size=3),
)
def test_zero_dequantises_to_exactly_zero(coef, scheme, bits, margin, zeros):
    coef = coef.copy()
    coef[[z % len(coef) for z in zeros]] = 0.0
    m = quantized(coef, scheme, bits, margin)
    assert np.all(m.coef[coef == 0.0] == 0.0)
    if scheme == "affine":  # the zero point is an integer code inside the range
        assert 0 <= int(m.arrays["zero_point"][0]) <= 2**bits - 1


@PROPERTY
@given(
    coef=coef_vectors,
    scheme=st.sampled_from(("window", "affine", "pow2")),
    bits=bit_widths,
    margin=margins,
)
def test_deterministic_and_file_round_trip_exact(tmp_path_factory, coef, scheme, bits, margin):
    m = quantized(coef, scheme, bits, margin)
    assert mdl.dumps(quantized(coef, scheme, bits, margin)) == mdl.dumps(m)
    path = tmp_path_factory.mktemp("rt") / "q.json"
    path.write_text(mdl.dumps(m))
    back = mdl.load_model(path)
    assert (back.scheme, back.bits, back.feature_names) == (m.scheme, m.bits, m.feature_names)
    for name, arr in m.arrays.items():
        assert back.arrays[name].dtype == arr.dtype
        np.testing.assert_array_equal(back.arrays[name], arr)
    np.testing.assert_array_equal(back.coef, m.coef)
    assert back.intercept == m.intercept


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), bits=bit_widths, seed=st.integers(0, 2**32 - 1))
def test_pack_fields_round_trip(n, bits, seed):
    fields = np.random.default_rng(seed).integers(0, 2**bits, n)
    packed = pack_fields(fields, bits)
    assert packed.dtype == np.uint8 and len(packed) == packed_length(n, bits)
    np.testing.assert_array_equal(unpack_fields(packed, bits, n), fields)


def regression_data(seed, n, rows=60):
    """Features of very different scales and a target that is linear in them plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, n)) * 10.0 ** rng.integers(-1, 4, n) + rng.normal(0, 50, n)
    coef = rng.normal(size=n) / X.std(axis=0)
    y = X @ coef + 3.0 + rng.normal(0, 0.3, rows)
    return X, y, coef


def mse_with_best_intercept(weights, X, y):
    residual = y - X @ weights
    return float(np.mean((residual - residual.mean()) ** 2))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    scheme=st.sampled_from(SOUND),
    bits=st.integers(2, 8),
)
def test_error_aware_rounding_never_fits_worse_and_stays_within_a_step(seed, n, scheme, bits):
    X, y, coef = regression_data(seed, n)
    kw = {"refit_intercept": True, "calibration": (X, y)}
    nearest = quantized(coef, scheme, bits, 0.01, rounding="nearest", **kw)
    aware = quantized(coef, scheme, bits, 0.01, rounding="error_aware", **kw)
    # nearest is one of the 2**n roundings searched
    assert mse_with_best_intercept(aware.coef, X, y) <= mse_with_best_intercept(
        nearest.coef, X, y
    ) * (1 + 1e-9)
    assert np.all(np.abs(aware.coef - coef) <= steps(aware) * (1 + 1e-12))


def test_error_aware_rounding_matches_a_brute_force_search():
    X, y, coef = regression_data(3, 5)
    kw = {"refit_intercept": True, "calibration": (X, y)}
    m = quantized(coef, "pow2", 3, None, rounding="error_aware", **kw)
    assert np.any(m.coef != quantized(coef, "pow2", 3, None, **kw).coef)  # not just nearest
    step = steps(m)
    roundings = itertools.product(
        *[(np.floor(c / s) * s, np.ceil(c / s) * s) for c, s in zip(coef, step, strict=True)]
    )
    best = min(roundings, key=lambda w: mse_with_best_intercept(np.array(w), X, y))
    np.testing.assert_array_equal(m.coef, best)


@pytest.mark.parametrize("scheme", SOUND)
def test_refitted_intercept_zeroes_the_mean_training_residual(scheme):
    X, y, coef = regression_data(8, 6)
    m = quantized(coef, scheme, 3, 0.05, refit_intercept=True, calibration=(X, y))
    mean_residual = np.mean(y - X @ m.coef - m.intercept)
    assert abs(mean_residual) <= np.spacing(np.float32(m.intercept)) + 1e-12
    fixed = quantized(coef, scheme, 3, 0.05)
    assert fixed.intercept == 1.5  # without refit the intercept is only stored as float32
    assert mse_with_best_intercept(m.coef, X, y) == pytest.approx(
        np.mean((y - m.predict(X)) ** 2), rel=1e-6
    )


def test_window_ignores_rounding_and_refit():
    X, y, coef = regression_data(1, 4)
    plain = qz.quantize(coef, 2.0, scheme="window", bits=8, half_width=0.05, feature_names=names(4))
    asked = qz.quantize(
        coef,
        2.0,
        scheme="window",
        bits=8,
        half_width=0.05,
        feature_names=names(4),
        rounding="error_aware",
        refit_intercept=True,
        calibration=(X, y),
    )
    assert mdl.dumps(asked) == mdl.dumps(plain)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"scheme": "affine", "padding": None}, "needs padding > 0"),
        ({"scheme": "window", "half_width": 0}, "needs half_width > 0"),
        ({"scheme": "pow2", "margin": 0.05}, "unknown setting 'margin'"),
        ({"scheme": "e3_t4_fix12"}, "choose their codes on calibration"),
        ({"scheme": "e3_t4_fix12", "bits": 3}, "from 4 to 12 under e3_t4_fix12"),
        ({"scheme": "pow2", "rounding": "floor"}, "rounding must be one of"),
        ({"scheme": "pow2", "refit_intercept": True}, "need calibration"),
        (
            {
                "scheme": "pow2",
                "rounding": "error_aware",
                "calibration": (np.ones((3, 2)), np.ones(3)),
            },
            "calibration must be X of shape",
        ),
        ({"scheme": "pow2", "bits": 17}, "bits must be an integer from 2 to 16"),
        ({"scheme": "other"}, "unknown scheme"),
    ],
)
def test_quantize_refuses_bad_arguments(kw, message):
    args = {"bits": 4, "padding": 0.05, "half_width": 0.05, "feature_names": NAMES} | kw
    with pytest.raises(ValueError, match=message):
        qz.quantize(np.ones(len(NAMES)), 0.0, **args)


def test_pow2_flushes_a_coefficient_below_the_int8_exponent_to_within_half_a_step():
    m = qz.quantize([1e-60, -3e-40, 0.5], 0.0, scheme="pow2", bits=8, feature_names=("a", "b", "c"))
    assert m.arrays["exponents"].tolist()[:2] == [-128, -128]
    assert np.all(np.abs(m.coef - [1e-60, -3e-40, 0.5]) <= steps(m) / 2)


def test_pow2_refuses_a_coefficient_beyond_the_int8_exponent():
    with pytest.raises(ValueError, match="too large for pow2"):
        qz.quantize([1e300], 0.0, scheme="pow2", bits=8, feature_names=("a",))


def _saved_sound(tmp_path, scheme, bits, edit):
    coef, intercept = random_model(5)
    doc = mdl.QuantizedModel.to_dict(
        qz.quantize(coef, intercept, scheme=scheme, bits=bits, padding=0.05, feature_names=NAMES)
    )
    edit(doc)
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    return path


def _set_codes(doc, values):
    doc["arrays"]["codes"]["values"] = values


@pytest.mark.parametrize(
    "scheme,bits,edit,message",
    [
        # 5 features x 4 bits = 20 bits: the last 4 bits of the 3 bytes are padding
        (
            "pow2",
            4,
            lambda d: _set_codes(d, [*d["arrays"]["codes"]["values"][:2], 15]),
            "non-zero padding bits",
        ),
        ("pow2", 4, lambda d: _set_codes(d, [0x80, 0, 0]), "outside the symmetric 4-bit range"),
        ("pow2", 8, lambda d: d["arrays"]["exponents"].update(values=[200] * 5), "do not fit int8"),
        ("pow2", 8, lambda d: d["feature_names"].pop(), "array 'codes' must be 4 x uint8"),
        ("pow2", 8, lambda d: d["arrays"].pop("intercept"), "needs arrays"),
        (
            "affine",
            8,
            lambda d: d["arrays"]["scale"].update(values=[-0.5]),
            "'scale' must be positive",
        ),
        (
            "affine",
            4,
            lambda d: d["arrays"]["zero_point"].update(values=[16]),
            "zero point exceeds the 4-bit range",
        ),
        (
            "affine",
            8,
            lambda d: d["arrays"]["intercept"].update(values=[1e39]),
            "do not fit float32",
        ),
        ("affine", 8, lambda d: d.update(version=2), "version 2 is not supported"),
    ],
)
def test_tampered_sound_files_are_refused_with_one_line(tmp_path, scheme, bits, edit, message):
    path = _saved_sound(tmp_path, scheme, bits, edit)
    with pytest.raises(ModelFileError, match=message) as info:
        mdl.load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("scheme", tuple(FORMATS))
def test_inference_from_the_file_needs_numpy_only(tmp_path, scheme):
    coef, intercept = random_model(2)
    coef = coef / np.abs(coef).max()  # within the 4-bit-exponent formats' range
    X = np.random.default_rng(2).normal(size=(40, len(NAMES)))
    y = X @ coef + intercept + np.random.default_rng(3).normal(0, 0.1, 40)
    m = qz.quantize(
        coef,
        intercept,
        scheme=scheme,
        bits=FORMATS[scheme].bits[-1] // 2 + 2,
        padding=0.05,
        half_width=0.05,
        feature_names=NAMES,
        calibration=(X, y),
    )
    path = tmp_path / "q.json"
    path.write_text(mdl.dumps(m))
    code = (
        "import sys, numpy as np; from cali_reg.model import load_model; "
        f"m = load_model({str(path)!r}); print(m.predict(np.eye({len(NAMES)})).tolist()); "
        "print(sorted({n.split('.')[0] for n in sys.modules}"
        " & {'sklearn', 'scipy', 'joblib', 'yaml'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    np.testing.assert_array_equal(json.loads(out[0]), m.predict(np.eye(len(NAMES))))
    assert out[1] == "[]"


# --- optimal rounding: exact codes, pow2 exponent descent, the margin criterion ---------


def training_cost(m, X, y):
    """Training MSE of a quantised model with its stored (float32) intercept."""
    return float(np.mean((y - m.predict(X)) ** 2))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    scheme=st.sampled_from(SOUND),
    bits=st.integers(2, 10),
    refit=st.booleans(),
)
def test_optimal_rounding_never_fits_worse_than_error_aware(seed, n, scheme, bits, refit):
    X, y, coef = regression_data(seed, n)
    kw = {"refit_intercept": refit, "calibration": (X, y)}
    aware = quantized(coef, scheme, bits, 0.01, rounding="error_aware", **kw)
    best = quantized(coef, scheme, bits, 0.01, rounding="optimal", **kw)
    slack = 1e-9 * training_cost(aware, X, y) + 1e-12  # the float32 intercept's rounding
    assert training_cost(best, X, y) <= training_cost(aware, X, y) + slack
    codes = signed_codes(best)
    if scheme == "pow2":
        assert np.abs(codes).max() <= 2 ** (bits - 1) - 1
    np.testing.assert_array_equal(best.coef, codes * steps(best))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    bits=st.integers(2, 3),
    refit=st.booleans(),
    wide=st.booleans(),
)
def test_closest_codes_equal_a_brute_force_search_over_the_whole_grid(seed, n, bits, refit, wide):
    X, y, coef = regression_data(seed, n)
    # a grid one exponent too fine on some coefficients clips their codes: the hard case
    grid = p2.grid(coef, bits)
    if wide:
        e = grid.stored["exponents"].astype(int) - np.random.default_rng(seed).integers(0, 2, n)
        grid = p2.grid_of(e, bits)
    intercept = None if refit else 1.5
    codes = round_codes(grid, coef, "optimal", (X, y), intercept)
    qmax = 2 ** (bits - 1) - 1
    every = np.array(list(itertools.product(range(-qmax, qmax + 1), repeat=n)))
    cost = costs(every * grid.step - coef, *quadratic_cost(coef, X, y, intercept))
    mine = costs(codes * grid.step - coef, *quadratic_cost(coef, X, y, intercept))[0]
    assert mine <= cost.min() + 1e-9 * abs(cost.min()) + 1e-15
    assert np.all(np.abs(codes) <= qmax)


def test_exponent_descent_never_fits_worse_than_the_fixed_grid_and_often_much_better():
    gains = []
    for seed in range(10):
        X, y, coef = regression_data(seed, 8, rows=200)
        fixed = p2.grid(coef, 3)
        codes = round_codes(fixed, coef, "optimal", (X, y))
        before = costs(codes * fixed.step - coef, *quadratic_cost(coef, X, y))[0]
        grid, codes = p2.optimal_grid(coef, 3, (X, y))
        after = costs(codes * grid.step - coef, *quadratic_cost(coef, X, y))[0]
        assert after <= before
        gains.append(after < 0.8 * before)
        m = quantized(
            coef, "pow2", 3, None, rounding="optimal", refit_intercept=True, calibration=(X, y)
        )
        np.testing.assert_array_equal(m.arrays["exponents"], grid.stored["exponents"])
        np.testing.assert_array_equal(m.coef, codes * grid.step)
    assert sum(gains) >= 5


def test_optimal_rounding_does_not_hinge_on_the_last_bits_of_the_data():
    """Rows in another order move the Gram matrix's last bits; the model stays the same."""
    X, y, coef = regression_data(11, 8, rows=500)
    order = np.random.default_rng(0).permutation(len(y))
    for bits in (2, 3, 4, 8):
        kw = {"rounding": "optimal", "refit_intercept": True}
        a = quantized(coef, "pow2", bits, None, calibration=(X, y), **kw)
        b = quantized(coef, "pow2", bits, None, calibration=(X[order], y[order]), **kw)
        assert mdl.dumps(a) == mdl.dumps(b)
        assert mdl.dumps(a) == mdl.dumps(
            quantized(coef, "pow2", bits, None, calibration=(X, y), **kw)
        )


def test_training_loss_is_the_drop_in_training_r2():
    X, y, coef = regression_data(4, 6)
    m = quantized(
        coef, "pow2", 3, None, rounding="optimal", refit_intercept=True, calibration=(X, y)
    )

    def r2(pred):
        return 1 - np.mean((y - pred) ** 2) / np.var(y)

    expected = r2(X @ coef + 1.5) - r2(m.predict(X))
    assert qz.training_loss(m, coef, 1.5, X, y) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("margin", [0.0, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 10.0])
def test_the_margin_picks_the_fewest_bits_whose_training_loss_is_within_it(margin):
    X, y, coef = regression_data(9, 8, rows=300)
    kw = {
        "scheme": "pow2",
        "feature_names": names(8),
        "rounding": "optimal",
        "refit_intercept": True,
        "calibration": (X, y),
    }
    m = qz.quantize_within(coef, 1.5, bits="auto", margin=margin, **kw)
    losses = {
        b: qz.training_loss(qz.quantize(coef, 1.5, bits=b, **kw), coef, 1.5, X, y)
        for b in range(2, 17)
    }
    within = [b for b, loss in losses.items() if loss <= margin]
    # none within: the most accurate width (the first of equal losses)
    expected = min(within) if within else min(losses, key=lambda b: (losses[b], b))
    assert m.bits == expected
    assert mdl.dumps(m) == mdl.dumps(qz.quantize(coef, 1.5, bits=expected, **kw))
    if margin == 10.0:
        assert m.bits == 2


def housing_like(seed=0, rows=400):
    """A model whose coefficients and intercept fit the 4-bit-exponent formats' range."""
    X, _, coef = regression_data(seed, 8, rows=rows)
    coef = coef / np.abs(coef).max() * 0.7
    return X, X @ coef + 3.0 + np.random.default_rng(seed).normal(0, 0.3, rows), coef


@pytest.mark.parametrize("margin", [1e-4, 1e-3, 1e-2])
def test_auto_picks_the_smallest_payload_within_the_margin_across_all_formats(margin):
    X, y, coef = housing_like()
    kw = {
        "feature_names": names(8),
        "calibration": (X, y),
        "padding": 0.05,
        "half_width": 0.05,
        "rounding": "optimal",
        "refit_intercept": True,
    }
    m = qz.quantize_within(coef, 3.0, scheme="auto", bits="auto", margin=margin, **kw)
    loss = qz.training_loss(m, coef, 3.0, X, y)
    assert loss <= margin
    # every smaller candidate, of any format, loses more than the margin
    for scheme, fmt in FORMATS.items():
        for bits in fmt.bits:
            if qz.payload_bytes(scheme, bits, 8) < m.payload_bytes:
                other = qz.quantize(coef, 3.0, scheme=scheme, bits=bits, **kw)
                assert qz.training_loss(other, coef, 3.0, X, y) > margin, (scheme, bits)
    assert mdl.dumps(m) == mdl.dumps(
        qz.quantize_within(coef, 3.0, scheme="auto", bits="auto", margin=margin, **kw)
    )


def test_auto_skips_a_format_whose_range_the_model_does_not_fit():
    X, y, coef = housing_like(1)
    y = y + 5000.0  # an intercept far beyond 12 bits of fixed point at this scale
    kw = {"feature_names": names(8), "calibration": (X, y)}
    with pytest.raises(FormatLimitError, match="e3_t4_fix12 cannot hold this model") as info:
        qz.quantize(coef, 5003.0, scheme="e3_t4_fix12", bits=8, **kw)
    assert "\n" not in str(info.value)
    m = qz.quantize_within(coef, 5003.0, scheme="auto", bits="auto", margin=0.01, **kw)
    assert m.scheme not in ("e3_t4_fix12", "e2_t4_fix12")
    assert qz.training_loss(m, coef, 5003.0, X, y) <= 0.01


def test_fixed_scheme_and_bits_ignore_the_margin():
    coef, intercept = random_model(6)
    for scheme in ("window", "affine"):
        kw = {"scheme": scheme, "bits": 6, "feature_names": NAMES, "padding": 0.05}
        kw["half_width"] = 0.05
        assert mdl.dumps(qz.quantize_within(coef, intercept, margin=0.0, **kw)) == mdl.dumps(
            qz.quantize(coef, intercept, **kw)
        )


def test_candidates_are_ordered_by_payload_then_registry_then_bits():
    pairs = qz.candidates("auto", "auto", 8)
    sizes = [qz.payload_bytes(s, b, 8) for s, b in pairs]
    assert sizes == sorted(sizes) and len(pairs) == sum(len(f.bits) for f in FORMATS.values())
    assert pairs[0] == ("e3_t4_fix12", 4)  # 4 bytes of codes and the 2-byte header
    assert qz.candidates("pow2", 4, 8) == [("pow2", 4)]
    assert all(b == 9 for _, b in qz.candidates("auto", 9, 8))


def test_quantize_within_refuses_bad_arguments():
    coef, intercept = random_model(6)
    kw = {"scheme": "pow2", "feature_names": NAMES, "rounding": "optimal"}
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 16 under pow2"):
        qz.quantize_within(coef, intercept, bits=17, margin=0.01, **kw)
    with pytest.raises(ValueError, match="bits must be 'auto' or an integer from 2 to 16"):
        qz.quantize_within(coef, intercept, **(kw | {"scheme": "auto"}), bits=17, margin=0.01)
    with pytest.raises(ValueError, match="margin must be a number >= 0"):
        qz.quantize_within(coef, intercept, bits="auto", margin=-0.01, **kw)
    with pytest.raises(ValueError, match="pass calibration"):
        qz.quantize_within(coef, intercept, bits="auto", margin=0.01, **kw)


@pytest.mark.parametrize("refit", [True, False])
def test_optimal_rounding_on_collinear_features_falls_back_to_error_aware(refit):
    X, y, coef = regression_data(2, 4)
    X[:, 3] = X[:, 3].mean() if refit else 2 * X[:, 1]  # constant, or a copy: a singular gram
    kw = {"rounding": "optimal", "refit_intercept": refit, "calibration": (X, y)}
    m = quantized(coef, "pow2", 4, None, **kw)
    aware = quantized(coef, "pow2", 4, None, **(kw | {"rounding": "error_aware"}))
    assert training_cost(m, X, y) <= training_cost(aware, X, y) * (1 + 1e-9)
