"""The parity rules on small arrays whose answers are computed by hand."""

import math

import numpy as np
import pytest

from lenet_export.errors import ConfigError
from lenet_export.parity import (Tolerance, batch_invariance, compare_logits, confident_bound, find_flips, judge,
                                 pairwise)

REF = np.array([[3.0, 1.0, 0.0],     # class 0, margin 2
                [0.0, 0.5, 0.45],    # class 1, margin 0.05 (near-tie)
                [0.0, 0.0, 10.0]])   # class 2, margin 10
LABELS = np.array([0, 1, 2])


def test_compare_logits_by_hand():
    out = REF.copy()
    out[0, 0] += 2e-4   # 2e-4 > 1e-4 + 1e-4 * 3 ? no: bound 4e-4 -> within
    out[2, 2] += 2e-3   # bound 1e-4 + 1e-3 = 1.1e-3 -> outside
    s = compare_logits(REF, out, Tolerance())
    assert s.max_abs == pytest.approx(2e-3)
    assert s.mean_abs == pytest.approx((2e-4 + 2e-3) / 9)
    assert s.max_rel == pytest.approx(2e-4)  # 2e-3 / 10 and 2e-4 / 3: the larger is 2e-4
    assert s.within_tolerance is False
    out[2, 2] = REF[2, 2] + 1e-3
    assert compare_logits(REF, out, Tolerance()).within_tolerance is True


def test_near_tie_flip_is_listed_but_passes():
    out = REF.copy()
    out[1] = [0.0, 0.45, 0.5]  # swaps classes 1 and 2 of a near-tie (margin 0.05)
    j = judge(REF, out, LABELS, Tolerance(atol=0.1, rtol=0))
    assert [(f.index, f.reference_class, f.backend_class) for f in j.flips] == [(1, 1, 2)]
    assert j.flips[0].reference_margin == pytest.approx(0.05)
    assert j.argmax_agree == 2
    # the flip changes accuracy: that rule fires, the confident-flip rule does not
    assert [f.rule for f in j.failures] == ["accuracy"]
    assert str(j.failures[0]) == "accuracy 0.6667 != reference 1.0000"  # the one rendering of a failure


def test_confident_flip_fails():
    ref = np.tile(REF, (40, 1))  # 120 samples; only sample 2 (margin 10) flips, everything else is exact
    out = ref.copy()
    out[2] = [0.0, 12.0, 10.0]
    j = judge(ref, out, np.tile(LABELS, 40), Tolerance(atol=100, rtol=0))
    # p99 of |diff| over 360 logits with one non-zero is 0, so the bound is 2 * atol... with atol 100 nothing
    # is confident: the bound is max(p99, atol) * 2 = 200 > 10.
    assert "confident-flips" not in [f.rule for f in j.failures]
    j = judge(ref, out, np.tile(LABELS, 40), Tolerance(atol=1, rtol=0))
    assert confident_bound(j.logits, Tolerance(atol=1, rtol=0)) == 2.0
    flips = [f for f in j.failures if f.rule == "confident-flips"]
    assert len(flips) == 1 and flips[0].sample == 2 and flips[0].numbers["count"] == 1
    assert flips[0].numbers["margin"] == pytest.approx(10)


def test_nan_and_inf_fail():
    out = REF.copy()
    out[0, 1] = np.nan
    out[2, 0] = np.inf
    j = judge(REF, out, LABELS, Tolerance())
    assert j.nonfinite == 2 and [(f.rule, f.numbers) for f in j.failures] == [("nonfinite", {"count": 2})]
    assert str(j.failures[0]) == "2 NaN or Inf values in the outputs"
    assert math.isinf(j.logits.max_abs)
    probs = np.full((3, 3), np.nan)
    j = judge(REF, REF.copy(), LABELS, Tolerance(), probabilities=probs)
    assert j.nonfinite == 9


def test_probabilities_must_be_softmax_of_logits():
    e = np.exp(REF - REF.max(1, keepdims=True))
    good = e / e.sum(1, keepdims=True)
    assert judge(REF, REF.copy(), LABELS, Tolerance(), probabilities=good).failures == []
    bad = good[:, ::-1].copy()
    assert [f.rule for f in judge(REF, REF.copy(), LABELS, Tolerance(), probabilities=bad).failures] == ["probabilities"]


def test_batch_invariance_by_hand():
    full = REF.copy()
    same = {1: full.copy(), 2: full.copy()}
    r = batch_invariance(same, full, 1000, Tolerance())
    assert r.passed and r.max_abs_diff == 0 and r.batch_sizes == [1, 2, 1000] and r.samples == 3
    moved = {1: full.copy(), 2: full + 1e-3}
    r = batch_invariance(moved, full, 1000, Tolerance())
    assert not r.passed and r.max_abs_diff == pytest.approx(1e-3)


def test_pairwise_matrix_and_flips():
    a = REF.copy()
    b = REF.copy()
    b[1] = [0.0, 0.45, 0.5]
    p = pairwise({"x": a, "y": b, "z": a.copy()})
    assert p.backends == ["x", "y", "z"]
    assert p.argmax_agree == [[3, 2, 3], [2, 3, 2], [3, 2, 3]]
    assert p.max_abs[0][1] == pytest.approx(0.05) and p.max_abs[0][2] == 0
    assert p.flips == {"x | y": {"count": 1, "samples": [1]}, "y | z": {"count": 1, "samples": [1]}}


def test_find_flips_none_when_equal():
    assert find_flips(REF, REF.copy()) == []


@pytest.mark.parametrize("atol,rtol", [(-1, 1e-4), (math.nan, 1e-4), (1e-4, math.inf), (1e-4, -0.5)])
def test_bad_tolerance_is_a_config_error(atol, rtol):
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        Tolerance(atol, rtol)


def test_approximate_budget_and_confident_flip():
    from lenet_export.parity import Budget, judge_approximate

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1000, 10)) * 3
    labels = ref.argmax(1)
    out = ref + rng.normal(scale=0.01, size=ref.shape)  # a typical small quantisation error everywhere
    j = judge_approximate(ref, out, labels, Budget(0.005))
    assert j.failures == [] and j.logits.within_tolerance
    # one confident sample flipped: its margin is far beyond twice the p99 of per-sample error
    k = int(np.argmax(np.sort(ref, 1)[:, -1] - np.sort(ref, 1)[:, -2]))
    out[k] = ref[k][::-1]
    j = judge_approximate(ref, out, labels, Budget(0.005))
    flips = [f for f in j.failures if f.rule == "confident-flips"]
    assert [(f.sample, f.numbers["count"]) for f in flips] == [(k, 1)], j.failures
    # accuracy: 0.4% drop fits a 0.5-point budget, not a 0.3-point one
    out = ref.copy()
    out[:4] = ref[:4, ::-1]
    assert "accuracy-drop" not in [f.rule for f in judge_approximate(ref, out, labels, Budget(0.005)).failures]
    drop = [f for f in judge_approximate(ref, out, labels, Budget(0.003)).failures if f.rule == "accuracy-drop"]
    assert len(drop) == 1 and drop[0].numbers["drop"] == pytest.approx(0.4) and "0.40 points below" in str(drop[0])
