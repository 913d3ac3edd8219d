"""The exact, cumulative credits taken back for refunds and disputes of a top-up (``clawback_micros``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from airies.billing.payments import clawback_micros


def test_proportional_half_up_and_capped():
    assert clawback_micros(2_000_000_000, 2000, 500) == 500_000_000
    assert clawback_micros(1_000_000, 3, 1) == 333_333  # 333333.33 -> down
    assert clawback_micros(2_000_000, 3, 1) == 666_667  # 666666.67 -> up
    assert clawback_micros(1_000_000, 1000, 5000) == 1_000_000  # never more than the payment's credits
    assert clawback_micros(1_000_000, 1000, 0) == 0
    assert clawback_micros(1_000_000, 0, 10) == 0


@given(
    credits=st.integers(0, 10**15),
    amount=st.integers(1, 10**8),
    cuts=st.lists(st.integers(1, 10**8), min_size=1, max_size=12),
)
def test_successive_partial_refunds_add_up_to_exactly_the_whole(credits, amount, cuts):
    """Each step takes target(cumulative) - target(previous): never negative, and once everything is refunded the
    steps sum to exactly the payment's credits (no rounding drift across partial refunds)."""
    taken, refunded = 0, 0
    for cut in [*cuts, amount]:  # the last refund covers whatever is left
        refunded = min(amount, refunded + cut)
        step = clawback_micros(credits, amount, refunded) - taken
        assert step >= 0
        taken += step
    assert taken == credits
