"""Anomaly baselines: an exponentially weighted mean and variance of a count per window.

Pure arithmetic; every backend applies ``fold`` inside its own atomic step (a SQLite
transaction, a Redis Lua script), so several guards adding to one baseline never lose a
count. The update is the incremental EWMA/EWMVar of T. Finch, "Incremental calculation of
weighted mean and variance" (2009), §9: ``d = x - mean; mean += a*d; var = (1-a)*(var + a*d*d)``.
"""

from __future__ import annotations

import math

from .records import Baseline

# Folding k empty windows in a row decays mean and variance by about (1-a)^k; once that is
# below this, more empty windows change nothing a detector could see, so stop folding.
_NEGLIGIBLE = 1e-12


def ewma_step(mean: float, variance: float, x: float, alpha: float) -> tuple[float, float]:
    """One EWMA/EWMVar update with observation ``x`` and weight ``alpha`` (Finch §9)."""
    d = x - mean
    incr = alpha * d
    return mean + incr, (1.0 - alpha) * (variance + d * incr)


def fold(base: Baseline | None, window: int, count: float, alpha: float) -> Baseline:
    """Add ``count`` events seen in window ``window`` to the baseline.

    Same window: the count adds to ``current``. A later window: the open window is closed
    (folded into mean/variance), then every window in between as an empty one, and ``window``
    opens with ``count``. An earlier window (a late report from a slow guard) adds to
    ``current``: it is not lost, and a baseline never goes back in time.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], not {alpha}")
    if count < 0:
        raise ValueError(f"a count is never negative, not {count}")
    if base is None:
        return Baseline(window=window, current=count)
    if window <= base.window:
        return Baseline(base.mean, base.variance, base.windows, base.window, base.current + count)
    mean, var = ewma_step(base.mean, base.variance, base.current, alpha)
    empty = window - base.window - 1
    # alpha == 1 keeps only the last window: one empty fold says it all.
    cap = 1 if alpha >= 1.0 else math.ceil(math.log(_NEGLIGIBLE) / math.log1p(-alpha))
    for _ in range(min(empty, cap)):
        mean, var = ewma_step(mean, var, 0.0, alpha)
    return Baseline(mean, var, base.windows + 1 + empty, window, count)
