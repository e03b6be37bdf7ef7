"""Unit tests of the pure quantisation module on small synthetic models."""
import json

import numpy as np
import pytest

from stages import quantizers as qz

NAMES = tuple(f"f{i}" for i in range(5))


def random_model(seed, n=len(NAMES)):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, n), float(rng.normal(0, 10))


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
@pytest.mark.parametrize("margin", [0.01, 0.05, 0.5])
def test_window_codes_in_range_and_error_within_half_step(bits, margin):
    coef, intercept = random_model(bits * 100 + int(margin * 100))
    m = qz.quantize(coef, intercept, scheme="window", bits=bits, margin=margin,
                    feature_names=NAMES)
    codes = m.arrays["codes"]
    assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert codes.max() < 2**bits
    params = np.append(coef, intercept).astype(np.float32).astype(np.float64)
    restored = np.append(m.coef, m.intercept)
    step = m.arrays["scale"].astype(np.float64)
    # half a step, plus float32 rounding of the arithmetic itself
    assert np.all(np.abs(restored - params) <= step / 2 + 4 * np.spacing(np.float32(np.abs(params) + margin)))
    # margin honoured: each window is [p - margin, p + margin]
    np.testing.assert_allclose(m.arrays["min"], params - margin, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.arrays["scale"] * (2**bits - 1), 2 * margin, rtol=1e-3)


def test_window_reproduces_seed_arithmetic():
    # every parameter sits at the centre of its window: the ratio is 127.5 and float32 rounds to 128
    m = qz.quantize([0.4487, -2e-6, 0.78], -37.0233, scheme="window", bits=8, margin=0.05,
                    feature_names=("a", "b", "c"))
    assert m.arrays["codes"].tolist() == [128] * 4
    assert m.payload_bytes == 4 * 1 + 4 * 4 + 4 * 4


def test_more_bits_or_smaller_margin_means_smaller_error():
    coef, intercept = random_model(7)
    params = np.append(coef, intercept)

    def err(bits, margin):
        m = qz.quantize(coef, intercept, scheme="window", bits=bits, margin=margin,
                        feature_names=NAMES)
        return np.abs(np.append(m.coef, m.intercept) - params).max()

    assert err(8, 0.01) < err(8, 0.05)
    assert err(4, 0.05) >= err(8, 0.05)


def test_predict_is_dequantised_linear_model():
    coef, intercept = random_model(3)
    m = qz.quantize(coef, intercept, scheme="window", bits=8, margin=0.05, feature_names=NAMES)
    X = np.random.default_rng(0).normal(size=(50, len(NAMES)))
    np.testing.assert_allclose(m.predict(X), X @ m.coef + m.intercept)
    with pytest.raises(qz.UserError, match="expected rows of 5 features"):
        m.predict(X[:, :4])


def test_linear_predict_gives_a_row_the_same_bits_in_any_batch():
    rng = np.random.default_rng(1)
    coef, intercept = rng.normal(0, 2, 8), -37.0233
    X = rng.normal(0, 100, size=(1000, 8))
    batch = qz.linear_predict(X, coef, intercept)
    np.testing.assert_allclose(batch, X @ coef + intercept, rtol=1e-12, atol=1e-12)
    for lo, hi in [(0, 1), (3, 4), (10, 17), (500, 1000)]:
        np.testing.assert_array_equal(qz.linear_predict(X[lo:hi], coef, intercept), batch[lo:hi])


def test_file_round_trip_is_exact(tmp_path):
    coef, intercept = random_model(11)
    m = qz.quantize(coef, intercept, scheme="window", bits=12, margin=0.02, feature_names=NAMES)
    path = tmp_path / "q.json"
    path.write_text(qz.dumps(m))
    back = qz.load(path)
    assert back.feature_names == NAMES and back.bits == 12
    for name, arr in m.arrays.items():
        assert back.arrays[name].dtype == arr.dtype
        np.testing.assert_array_equal(back.arrays[name], arr)
    assert qz.dumps(back) == qz.dumps(m)


def _saved(tmp_path, edit):
    coef, intercept = random_model(5)
    doc = qz.to_dict(qz.quantize(coef, intercept, scheme="window", bits=8, margin=0.05,
                                 feature_names=NAMES))
    edit(doc)
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit,message", [
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
])
def test_tampered_files_are_refused_with_one_line(tmp_path, edit, message):
    path = _saved(tmp_path, edit)
    with pytest.raises(qz.ModelFileError, match=message) as info:
        qz.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_and_missing_files_are_refused(tmp_path):
    path = _saved(tmp_path, lambda d: None)
    path.write_text(path.read_text()[:40])
    with pytest.raises(qz.ModelFileError, match="corrupt or truncated"):
        qz.load(path)
    with pytest.raises(qz.ModelFileError, match="is missing"):
        qz.load(tmp_path / "nope.json")


def test_linear_predict_sums_feature_by_feature_across_blocks():
    rng = np.random.default_rng(2)
    coef, intercept = rng.normal(0, 2, 8), 3.25
    for n in (0, 1, qz._BLOCK_ROWS - 1, qz._BLOCK_ROWS, 2 * qz._BLOCK_ROWS + 5):
        X = rng.normal(0, 100, size=(n, 8))
        expected = X[:, 0] * coef[0]  # the order of operations the result must follow exactly
        for j in range(1, 8):
            expected = expected + X[:, j] * coef[j]
        np.testing.assert_array_equal(qz.linear_predict(X, coef, intercept), expected + intercept)
