"""Summary statistics of benchmark records (plain Python: ``dpo-diff report`` needs neither torch nor scipy).

The unit of analysis is a prompt: each record's losses are averaged over the report seeds first, then methods are
compared over the prompts every method finished (paired comparisons on the same prompts and seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30, then 40, 60, 120, infinity).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
_T975_TAIL = [(40, 2.021), (60, 2.000), (120, 1.980)]


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom; between table rows the smaller df is used
    (a slightly wider, conservative interval)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    value = _T975[-1]
    for d, q in _T975_TAIL:
        if df >= d:
            value = q
    return value if df < 1_000 else 1.960


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
