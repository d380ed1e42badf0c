"""Summary statistics of benchmark records (t quantiles from scipy; no torch needed).

The unit of analysis is a prompt: each record's losses are averaged over the report seeds first, then methods are
compared over the prompts every method finished (paired comparisons on the same prompts and seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (scipy; NaN below one degree of freedom)."""
    if df < 1:
        return math.nan
    from scipy import stats  # imported here: reading results files needs no scipy

    return float(stats.t.ppf(0.975, df))


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1)
    ci95: float  # half-width of the t interval of the mean

    def fmt(self, digits: int = 4) -> str:
        if self.n == 0:
            return "-"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def fmt_ci(self, digits: int = 4) -> str:
        if self.n < 2:
            return "-"
        return f"[{self.mean - self.ci95:.{digits}f}, {self.mean + self.ci95:.{digits}f}]"


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(n, mean, std, t975(n - 1) * std / math.sqrt(n))


def win_rate(a: Sequence[float], b: Sequence[float], sign: float) -> float:
    """Share of paired prompts where ``a`` beats ``b`` (lower ``sign * loss``); ties count half."""
    if not a:
        return math.nan
    wins = sum(1.0 if sign * x < sign * y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))
    return wins / len(a)


def best_so_far_curve(history: Sequence[Sequence[float]], start: float, grid: Sequence[float],
                      sign: float) -> list[float]:
    """The best loss found by cost ``c`` for each ``c`` in ``grid`` (``start``, the user prompt's loss, before any
    candidate beats it: a search that finds nothing better returns the user prompt)."""
    out, best, i = [], start, 0
    points = sorted((float(c), float(v)) for c, v in history)
    for c in grid:
        while i < len(points) and points[i][0] <= c + 1e-9:
            if sign * points[i][1] < sign * best:
                best = points[i][1]
            i += 1
        out.append(best)
    return out
