"""The pure parts of the state package: GCRA buckets, EWMA baselines, the flag view."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iot_guard.state import (
    ALL_AGENTS,
    Baseline,
    FlagSnapshot,
    FlagView,
    Kill,
    RateLimit,
    Revocation,
    VoidBefore,
)
from iot_guard.state.baseline import ewma_step, fold
from iot_guard.state.flags import diff_flags
from iot_guard.state.ratelimit import LocalRateLimiter, gcra_take

# ----------------------------------------------------------------------------- GCRA


def test_rate_limit_refuses_nonsense() -> None:
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError):
            RateLimit(per_minute=bad, burst=1)
    with pytest.raises(ValueError):
        RateLimit(per_minute=10, burst=0)
    assert RateLimit(per_minute=30, burst=2).interval == 2.0


def test_gcra_steady_rate_after_the_burst() -> None:
    limit = RateLimit(per_minute=60, burst=3)  # 1 per second
    tat = None
    allowed = []
    # 10 s of one attempt every 0.25 s: the burst of 3, then one per second.
    for i in range(40):
        grant, tat = gcra_take(tat, 100 + i * 0.25, limit, 1, partial=False)
        allowed.append(grant.ok)
    assert sum(allowed) == 3 + 9  # 3 at once, then at t=101, 102, ... 109
    assert allowed[:4] == [True, True, True, False]


def test_gcra_all_or_nothing_and_partial() -> None:
    limit = RateLimit(per_minute=60, burst=5)
    grant, tat = gcra_take(None, 0.0, limit, 4, partial=False)
    assert grant.granted == 4
    refused, same = gcra_take(tat, 0.0, limit, 2, partial=False)
    assert refused.granted == 0 and same == tat and refused.retry_after == pytest.approx(1.0)
    part, tat2 = gcra_take(tat, 0.0, limit, 2, partial=True)
    assert part.granted == 1 and tat2 == pytest.approx(5.0)
    assert part.retry_after == pytest.approx(1.0)  # the next single unit
    with pytest.raises(ValueError):
        gcra_take(None, 0.0, limit, 0, partial=True)


def test_gcra_an_action_dearer_than_the_burst_never_fits() -> None:
    grant, tat = gcra_take(None, 0.0, RateLimit(per_minute=60, burst=2), 3, partial=False)
    assert grant.granted == 0 and grant.retry_after == math.inf and tat is None


def test_gcra_idle_time_refills_no_more_than_the_burst() -> None:
    limit = RateLimit(per_minute=60, burst=2)
    tat = None
    for _ in range(2):
        _, tat = gcra_take(tat, 0.0, limit, 1, partial=False)
    grant, tat = gcra_take(tat, 3600.0, limit, 5, partial=True)  # an hour later
    assert grant.granted == 2


def test_local_limiter_sweeps_full_buckets() -> None:
    limiter = LocalRateLimiter()
    limit = RateLimit(per_minute=60, burst=1)
    for i in range(1500):
        limiter.try_take(f"session-{i}", limit, now=float(i))
    # Each bucket is full again one second after its take: the table stays small.
    assert len(limiter) < 1100
    left = len(limiter)
    assert left > 0 and limiter.sweep(10_000.0) == left and len(limiter) == 0


# ----------------------------------------------------------------------------- EWMA


def test_ewma_step_matches_the_definition() -> None:
    # Finch §9 with alpha = 0.5, mean 2, var 1, x = 4: d = 2, mean 3, var 0.5*(1+2*1) = 1.5.
    assert ewma_step(2.0, 1.0, 4.0, 0.5) == (3.0, 1.5)


def test_fold_accumulates_closes_and_skips_windows() -> None:
    b = fold(None, 5, 3, 0.5)
    assert b == Baseline(window=5, current=3)
    b = fold(b, 5, 2, 0.5)
    assert b.current == 5 and b.windows == 0
    b = fold(b, 6, 1, 0.5)  # window 5 (5 events) closes
    assert (b.mean, b.variance, b.windows, b.window, b.current) == (2.5, 6.25, 1, 6, 1)
    b = fold(b, 9, 0, 0.5)  # 6 closes with 1, then 7 and 8 were empty
    m, v = ewma_step(2.5, 6.25, 1, 0.5)
    for _ in range(2):
        m, v = ewma_step(m, v, 0, 0.5)
    assert (b.mean, b.variance, b.windows, b.window) == (pytest.approx(m), pytest.approx(v), 4, 9)


def test_fold_a_late_report_is_not_lost_and_never_goes_back() -> None:
    b = fold(fold(None, 10, 1, 0.3), 9, 2, 0.3)
    assert b.window == 10 and b.current == 3


def test_fold_after_a_long_silence_is_bounded_and_decays_to_zero() -> None:
    b = fold(None, 0, 100, 0.1)
    b = fold(b, 10_000_000, 1, 0.1)  # about 19 years of one-minute windows
    assert b.windows == 10_000_000 and b.mean < 1e-9 and b.variance < 1e-6


def test_fold_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        fold(None, 0, 1, 1.5)
    with pytest.raises(ValueError):
        fold(None, 0, -1, 0.5)


# ----------------------------------------------------------------------------- flag view


def snap(**kw: object) -> FlagSnapshot:
    return FlagSnapshot(**kw)  # type: ignore[arg-type]


def test_view_answers_from_its_snapshot_and_swaps_whole() -> None:
    view = FlagView()
    assert view.is_killed("a") is None and view.token_void("a", "j", 5) is None
    view.replace(snap(
        kills={"a": Kill("a", "loop", "secops", 10.0)},
        revoked={"j9": Revocation("j9", "b", "leaked", 1.0, 99.0)},
        void_before={ALL_AGENTS: VoidBefore(ALL_AGENTS, 50.0, "rotation")},
    ))
    assert "loop" in (view.is_killed("a") or "")
    assert view.is_killed("b") is None
    assert "leaked" in (view.token_void("b", "j9", 60) or "")
    assert "rotation" in (view.token_void("c", "j1", 49) or "")
    assert view.token_void("c", "j1", 50) is None


def test_diff_names_each_change() -> None:
    old = snap(kills={"a": Kill("a", "r", "s", 1.0)},
               void_before={"a": VoidBefore("a", 1.0, "r")})
    new = snap(kills={"b": Kill("b", "r2", "s", 2.0)},
               revoked={"j": Revocation("j", "a", "leak", 2.0, 9.0)},
               void_before={"a": VoidBefore("a", 1.0, "r"), "b": VoidBefore("b", 2.0, "r2")})
    kinds = [(e.kind, e.agent, e.jti) for e in diff_flags(old, new)]
    assert kinds == [("kill", "b", None), ("lift", "a", None), ("revoke", "a", "j"),
                     ("void_before", "b", None)]
    assert diff_flags(new, new) == []


# A token bucket written the textbook way (tokens refill continuously up to the burst): GCRA
# must answer exactly like it. Times are multiples of 1/4 s with one unit per second, so the
# arithmetic is exact in binary floating point.
@settings(max_examples=300, deadline=None)
@given(
    burst=st.integers(1, 5),
    takes=st.lists(st.tuples(st.integers(0, 12), st.integers(1, 3), st.booleans()), max_size=40),
)
def test_limiter_answers_like_a_token_bucket(
    burst: int, takes: list[tuple[int, int, bool]]
) -> None:
    limit = RateLimit(per_minute=60, burst=burst)
    limiter = LocalRateLimiter()
    tokens, last, now = float(burst), 0.0, 0.0
    for quarters, n, partial in takes:
        now += quarters / 4
        tokens, last = min(float(burst), tokens + (now - last)), now
        want = min(n, int(tokens)) if partial else (n if tokens >= n else 0)
        tokens -= want
        got = (limiter.take_up_to if partial else limiter.try_take)("k", limit, now, n)
        assert got.granted == want, (now, n, partial)
        if want < n:
            needed = 1 if partial else n
            expected = math.inf if needed > burst else needed - tokens
            assert got.retry_after == pytest.approx(expected)
        else:
            assert got.retry_after == 0.0
