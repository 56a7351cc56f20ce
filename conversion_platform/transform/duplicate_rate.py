"""The usual range of an hour's duplicate rate, learned from the hours before it.

The duplicate rate (copies not delivered as conversions of their own / copies received)
mostly reflects how many conversions reach both the pixel and the backend, so it is
stable for a site and moves when something breaks: the pixel stops sharing its
`event_id` with the backend (the rate drops), or a sender starts re-sending (it jumps).

An hour's usual range is the median of the trailing hours' rates (the last 7 days, hours
with at least `min_copies` copies) plus or minus four robust standard deviations
(1.4826 × the median absolute deviation), and never narrower than ± 0.05, so ordinary
hour-to-hour noise doesn't warn. With fewer than `min_hours` such hours (a new install),
the configured range applies. Hours with fewer than `min_copies` copies are not judged:
their rate is noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOOKBACK_HOURS = 168
MIN_HISTORY_HOURS = 12
MIN_COPIES = 20
SPREAD = 4.0
MIN_HALF_WIDTH = 0.05
_MAD_TO_SIGMA = 1.4826

BASIS_HISTORY = "trailing hours"
BASIS_CONFIGURED = "configured range"
BASIS_TOO_FEW = "too few copies to judge"


@dataclass(frozen=True)
class UsualRange:
    """The range an hour's rate is judged against, and what it was learned from."""

    low: float
    high: float
    basis: str
    history_hours: int = 0

    def contains(self, rate: float) -> bool:
        return self.low <= rate <= self.high


def usual_range(
    history: Sequence[float],
    configured: tuple[float, float],
    *,
    min_hours: int = MIN_HISTORY_HOURS,
) -> UsualRange:
    """The usual range from the trailing hours' rates, or the configured one."""
    rates = np.asarray([r for r in history if np.isfinite(r)], dtype=float)
    if len(rates) < min_hours:
        return UsualRange(configured[0], configured[1], BASIS_CONFIGURED, len(rates))
    median = float(np.median(rates))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(rates - median)))
    half = max(SPREAD * sigma, MIN_HALF_WIDTH)
    return UsualRange(
        max(0.0, round(median - half, 4)),
        min(1.0, round(median + half, 4)),
        BASIS_HISTORY,
        len(rates),
    )


def judge_hour(
    rate: float,
    copies_in: int,
    history: Sequence[float],
    configured: tuple[float, float],
    *,
    min_copies: int = MIN_COPIES,
    min_hours: int = MIN_HISTORY_HOURS,
) -> tuple[bool, UsualRange]:
    """(in range, the range) for one hour; a low-volume hour always passes."""
    if copies_in < min_copies:
        return True, UsualRange(0.0, 1.0, BASIS_TOO_FEW)
    bounds = usual_range(history, configured, min_hours=min_hours)
    return bounds.contains(rate), bounds
