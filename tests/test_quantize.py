"""The quantize stage's own behaviour (the maths is tested in test_quantizers.py)."""
import pytest

from stages import quantize
from tests.conftest import sh
from tests.test_pipeline import set_params


def test_unused_keys_follow_each_schemes_needs():
    assert quantize.unused_keys("pow2") == ["margin"]
    assert quantize.unused_keys("affine") == []
    assert quantize.unused_keys("window") == ["refit_intercept", "rounding"]
    assert set(quantize.RULES) >= {k for s in ("pow2", "window") for k in quantize.unused_keys(s)}


@pytest.mark.parametrize("scheme,note", [
    ("pow2", "note: scheme pow2 does not use quantize.margin"),
    ("window", "note: scheme window does not use quantize.refit_intercept, quantize.rounding"),
    ("affine", ""),
])
def test_stage_says_which_params_its_scheme_ignores(repo, scheme, note):
    set_params(repo, quantize={"scheme": scheme})
    proc = sh(["python", "-m", "stages.quantize"], repo)
    assert proc.stderr.strip() == note
