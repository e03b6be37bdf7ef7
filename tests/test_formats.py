"""Each format's file, read byte by byte against its documented layout, and its encoder.

The readers below are written from the layouts in the formats' docstrings and
docs/quantisation.md, with Python integers and fractions, not with the package's
decoders: if a decoder and its documentation part ways, these tests say so.
"""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from cali_reg import model as mdl
from cali_reg import quantize as qz
from cali_reg.errors import ModelFileError
from cali_reg.formats import BITS, FORMATS, FormatLimitError
from cali_reg.formats import minifloat as mf
from cali_reg.lattice import closest_values

NAMES = tuple(f"f{i}" for i in range(8))
SETTINGS = {"padding": 0.05, "half_width": 0.05, "rounding": "optimal", "refit_intercept": True}


def housing_like(seed=0, rows=300):
    """Features of very different scales; coefficients and intercept within every range."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 8)) * 10.0 ** rng.integers(-1, 3, 8) + rng.normal(0, 20, 8)
    coef = rng.normal(size=8) / X.std(axis=0)
    coef = coef / np.abs(coef).max() * 0.7
    y = X @ coef - 30.0 + rng.normal(0, 0.3, rows)
    fitted = np.linalg.lstsq(np.column_stack([X, np.ones(rows)]), y, rcond=None)[0]
    return X, y, fitted[:8], float(fitted[8])


def file_doc(scheme, bits, seed=0):
    X, y, coef, intercept = housing_like(seed)
    m = qz.quantize(
        coef,
        intercept,
        scheme=scheme,
        bits=bits,
        feature_names=NAMES,
        calibration=(X, y),
        **SETTINGS,
    )
    return m, json.loads(mdl.dumps(m))


# --- an independent reading of each documented layout ----------------------------


def bit_string(values) -> str:
    return "".join(f"{v:08b}" for v in values)


def fields(values, width, n):
    """n unsigned fields of ``width`` bits, most significant first; the rest must be zeros."""
    bits = bit_string(values)
    assert set(bits[n * width :]) <= {"0"}, "padding bits must be zero"
    return [int(bits[i * width : (i + 1) * width], 2) for i in range(n)]


def signed(u, width):
    return u - (1 << width) if u >= 1 << (width - 1) else u


def f32(x):
    return float(np.float32(x))


def read_window(doc):
    a = doc["arrays"]
    return [
        f32(f32(f32(c) * f32(s)) + f32(lo))
        for c, s, lo in zip(
            a["codes"]["values"], a["scale"]["values"], a["min"]["values"], strict=True
        )
    ]


def read_affine(doc):
    a, bits = doc["arrays"], doc["bits"]
    scale, zp = Fraction(a["scale"]["values"][0]), a["zero_point"]["values"][0]
    codes = fields(a["codes"]["values"], bits, 8)
    return [(c - zp) * scale for c in codes] + [Fraction(a["intercept"]["values"][0])]


def read_pow2(doc):
    a, bits = doc["arrays"], doc["bits"]
    codes = [signed(c, bits) for c in fields(a["codes"]["values"], bits, 8)]
    exps = a["exponents"]["values"]
    return [c * Fraction(2) ** e for c, e in zip(codes, exps, strict=True)] + [
        Fraction(a["intercept"]["values"][0])
    ]


def minifloat(u, bits, x, top):
    """sign, x exponent bits E, y mantissa bits m; s = T - (2**x - 2)."""
    y = bits - 1 - x
    sign, e, m = u >> (bits - 1), (u >> y) & ((1 << x) - 1), u & ((1 << y) - 1)
    assert not (sign and e == 0 and m == 0), "negative zero is never written"
    s = top - (2**x - 2)
    value = (
        Fraction(m) * Fraction(2) ** (s - y)
        if e == 0
        else (Fraction((1 << y) + m) * Fraction(2) ** (s + e - 1 - y))
    )
    return -value if sign else value


def read_e3_s8_f16(doc):
    a, bits = doc["arrays"], doc["bits"]
    top = a["top"]["values"][0]
    codes = fields(a["codes"]["values"], bits, 8)
    return [minifloat(u, bits, 3, top) for u in codes] + [Fraction(a["intercept"]["values"][0])]


def read_t4(doc, x):
    a, bits = doc["arrays"], doc["bits"]
    header = bit_string(a["header"]["values"])
    top, k = signed(int(header[:4], 2), 4), signed(int(header[4:16], 2), 12)
    codes = fields(a["codes"]["values"], bits, 8)
    return [minifloat(u, bits, x, top) for u in codes] + [k * Fraction(2) ** (top - 4)]


READERS = {
    "window": read_window,
    "affine": read_affine,
    "pow2": read_pow2,
    "e3_s8_f16": read_e3_s8_f16,
    "e3_t4_fix12": lambda d: read_t4(d, 3),
    "e2_t4_fix12": lambda d: read_t4(d, 2),
}
# the documented payload of 8 coefficients at b bits
PAYLOADS = {
    "window": lambda b: 9 * (1 if b <= 8 else 2) + 36 + 36,
    "affine": lambda b: b + 4 + (1 if b <= 8 else 2) + 4,
    "pow2": lambda b: b + 8 + 4,
    "e3_s8_f16": lambda b: b + 1 + 2,
    "e3_t4_fix12": lambda b: b + 2,
    "e2_t4_fix12": lambda b: b + 2,
}


def test_every_registered_format_has_an_independent_reader():
    assert READERS.keys() == FORMATS.keys() == PAYLOADS.keys()
    for fmt in FORMATS.values():
        assert set(fmt.bits) <= set(BITS)


@pytest.mark.parametrize(
    "scheme,bits",
    [
        (s, b)
        for s, f in FORMATS.items()
        for b in sorted({f.bits[0], 6, 8, f.bits[-1]} & set(f.bits))
    ],
)
def test_the_file_decodes_byte_by_byte_as_its_layout_documents(scheme, bits):
    m, doc = file_doc(scheme, bits)
    assert doc["scheme"] == scheme and doc["bits"] == bits
    expected = READERS[scheme](doc)
    got = [*m.coef.tolist(), m.intercept]
    assert [float(v) for v in expected] == got  # exact: integers and powers of two
    assert m.payload_bytes == PAYLOADS[scheme](bits)
    assert m.payload_bytes == qz.payload_bytes(scheme, bits, 8)
    back = mdl.from_dict(doc)
    assert mdl.dumps(back) == mdl.dumps(m)


@pytest.mark.parametrize("scheme", ["e3_s8_f16", "e3_t4_fix12", "e2_t4_fix12"])
def test_minifloat_codes_hold_every_documented_value_once(scheme):
    exp_bits = 2 if scheme.startswith("e2") else 3
    bits = 8
    values, codes = mf.code_values(bits, -1, exp_bits)
    assert np.all(np.diff(values) > 0)  # ascending, no value twice
    assert len(values) == 2**bits - 1  # every code but the negative zero
    assert [float(minifloat(int(u), bits, exp_bits, -1)) for u in codes] == values.tolist()


def minifloat_doc(scheme="e3_t4_fix12", bits=8):
    return file_doc(scheme, bits)[1]


@pytest.mark.parametrize(
    "scheme,edit,message",
    [
        ("e3_t4_fix12", lambda a: a["codes"]["values"].__setitem__(0, 0x80), "negative zero"),
        ("e3_t4_fix12", lambda a: a["header"]["values"].pop(), "array 'header' must be 2"),
        ("e3_t4_fix12", lambda a: a["header"].update(dtype="uint16"), "must be 2 x uint8"),
        ("e3_s8_f16", lambda a: a["top"]["values"].__setitem__(0, 200), "do not fit int8"),
        ("e3_s8_f16", lambda a: a["intercept"]["values"].__setitem__(0, 0.1), "do not fit float16"),
        ("e3_s8_f16", lambda a: a["intercept"]["values"].__setitem__(0, 1e6), "do not fit float16"),
        ("e2_t4_fix12", lambda a: a["codes"]["values"].append(0), "array 'codes' must be 8"),
    ],
)
def test_tampered_minifloat_files_are_refused_with_one_line(tmp_path, scheme, edit, message):
    doc = minifloat_doc(scheme)
    edit(doc["arrays"])
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match=message) as info:
        mdl.load_model(path)
    assert "\n" not in str(info.value)


def test_a_minifloat_width_outside_the_format_is_refused(tmp_path):
    doc = minifloat_doc("e2_t4_fix12")
    doc["bits"] = 7  # E2 is offered from 8 bits
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="from 8 to 12 under scheme e2_t4_fix12"):
        mdl.load_model(path)


@pytest.mark.parametrize(
    "coef_scale,intercept,message",
    [
        (1000.0, -30.0, "e3_t4_fix12 cannot hold this model"),  # max|coef| ~ 2**9
        (1.0, -5000.0, "e3_t4_fix12 cannot hold this model"),  # beyond 12 bits of fixed point
    ],
)
def test_the_4_bit_scale_format_refuses_a_model_outside_its_range(coef_scale, intercept, message):
    X, y, coef, _ = housing_like(2)
    coef = coef * coef_scale
    y = X @ coef + intercept
    with pytest.raises(FormatLimitError, match=message) as info:
        qz.quantize(
            coef, intercept, scheme="e3_t4_fix12", bits=8, feature_names=NAMES, calibration=(X, y)
        )
    assert "\n" not in str(info.value)
    # the int8 exponent and float16 intercept hold it
    m = qz.quantize(
        coef, intercept, scheme="e3_s8_f16", bits=8, feature_names=NAMES, calibration=(X, y)
    )
    assert qz.training_loss(m, coef, intercept, X, y) < 0.05


# --- the joint search ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weight", [0.0, 0.05])
def test_closest_values_equal_a_brute_force_search(seed, weight):
    rng = np.random.default_rng(seed)
    n = 3
    a = rng.normal(size=(n, n))
    gram = a @ a.T + 0.1 * np.eye(n)
    b = rng.normal(size=(n, n))
    spread = b @ b.T + 0.1 * np.eye(n)
    ref = rng.normal(size=n)
    cross = rng.normal(size=n) * 0.1
    alphabets = [np.sort(rng.choice(np.linspace(-3, 3, 61), size=12, replace=False))] * n

    def total(v):
        d = np.asarray(v) - ref
        return d @ gram @ d - 2 * d @ cross + weight * math.sqrt(d @ spread @ d)

    idx, best = closest_values(alphabets, ref, gram, cross, spread=spread, weight=weight)
    every = min(total(v) for v in itertools.product(*alphabets))
    assert best == pytest.approx(every, rel=1e-9, abs=1e-12)
    assert total([alphabets[i][k] for i, k in enumerate(idx)]) == pytest.approx(every, rel=1e-9)


def test_the_minifloat_encoder_fits_at_least_as_well_as_nearest_rounding():
    X, y, coef, intercept = housing_like(3)
    objective = mf.RobustObjective(coef, intercept, (X, y))
    top, fields_, b = mf.choose(coef, intercept, 8, 3, (X, y), mf.fix12_grid)
    values, codes = mf.code_values(8, top, 3)
    value_of = dict(zip(codes.tolist(), values.tolist(), strict=True))
    chosen = np.append([value_of[u] for u in fields_.tolist()], b)
    grid = mf.fix12_grid(top, intercept)
    nearest = np.append(
        [values[np.argmin(np.abs(values - c))] for c in coef],
        grid[np.argmin(np.abs(grid - intercept))],
    )

    def total(v):
        u = v - objective.ref
        return (
            u @ objective.gram @ u
            - 2 * u @ objective.cross
            + objective.weight * math.sqrt(u @ objective.hr @ u)
        )

    assert total(chosen) <= total(nearest)


def test_the_minifloat_encoder_is_deterministic_and_ignores_the_row_order():
    X, y, coef, intercept = housing_like(4, rows=500)
    order = np.random.default_rng(0).permutation(len(y))
    for scheme in ("e3_s8_f16", "e3_t4_fix12", "e2_t4_fix12"):
        kw = {"scheme": scheme, "bits": 9, "feature_names": NAMES}
        a = qz.quantize(coef, intercept, calibration=(X, y), **kw)
        b = qz.quantize(coef, intercept, calibration=(X[order], y[order]), **kw)
        assert mdl.dumps(a) == mdl.dumps(b)
