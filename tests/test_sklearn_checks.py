"""scikit-learn's own estimator checks (the conformance suite every estimator must pass)."""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import nnreg

# Weighting rows by integers must give *the same predictions* as repeating them, to
# rtol=1e-7. In float32 that cannot hold: the check shuffles the weighted rows, so sums run in
# another order and differ by float32 rounding (~1e-7 relative) before training amplifies it.
# The same check passes in float64 (the second instance), which shows the maths is exact.
FLOAT32_EXCEPTIONS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "float32 rounding of reordered sums exceeds the check's rtol=1e-7; passes with "
        "dtype='float64'"
    ),
}


def expected_failures(estimator: nnreg.Regressor) -> dict[str, str]:
    return FLOAT32_EXCEPTIONS if estimator.dtype == "float32" else {}


@pytest.mark.slow
@parametrize_with_checks(
    [
        nnreg.Regressor(max_iter=50, random_state=0, dtype="float64"),
        nnreg.Regressor(max_iter=50, random_state=0),
    ],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)
