"""Forward-pass cost as a function of the number of new tokens, from profiled measurements.

Measured sizes are used as measured: on a CPU the cost is not smooth in n (BLAS switches kernels;
Qwen2.5-Coder-1.5B on 2 cores: 251 ms for 1 new token, 289 ms for 3, 499 ms for 4, 633 ms for 16),
and a block size that lands on a cheap n is a real gain. Between measured sizes the cost is
interpolated monotonically (scipy's PCHIP); beyond the largest, a straight line is fitted by least
squares (scipy) to the measured points of the upper half and never drops below the last measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.stats import linregress


@dataclass(frozen=True, eq=True)
class CostCurve:
    """Seconds of one forward pass with ``n`` new tokens (n >= 1).

    Example:
        >>> curve = CostCurve.from_measurements({1: 0.251, 3: 0.289, 4: 0.499, 16: 0.633})
        >>> curve(3), round(curve(2), 3), round(curve(32), 3)
        (0.289, 0.26, 0.812)
    """

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.seconds):
            raise ValueError("a cost curve needs at least one (size, seconds) measurement")
        if list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError(f"sizes must be increasing and >= 1, got {self.sizes}")
        if min(self.seconds) < 0:
            raise ValueError("costs must be >= 0")
        object.__setattr__(self, "_memo", dict(zip(self.sizes, self.seconds, strict=True)))

    @classmethod
    def from_measurements(cls, table: Mapping[int, float]) -> CostCurve:
        """From ``{new tokens: seconds}``."""
        sizes = sorted(int(n) for n in table)
        return cls(tuple(sizes), tuple(float(table[n]) for n in sizes))

    @classmethod
    def linear(cls, fixed: float, per_token: float, max_size: int = 64) -> CostCurve:
        """``fixed + per_token * n``, tabulated up to ``max_size`` (for tests and what-if plans)."""
        return cls.from_measurements({n: fixed + per_token * n for n in range(1, max_size + 1)})

    def __call__(self, n: int) -> float:
        if n < 1:
            raise ValueError(f"a forward pass has at least one new token, got {n}")
        if n not in self._memo:  # measured sizes are in it from the start
            if n < self.sizes[-1]:
                self._memo[n] = float(PchipInterpolator(self.sizes, self.seconds)(n))
            else:
                self._memo[n] = self._extrapolate(n)
        return self._memo[n]

    def _extrapolate(self, n: int) -> float:
        x, y = np.array(self.sizes, float), np.array(self.seconds, float)
        upper = x >= np.median(x)
        if upper.sum() < 2:
            return float(y[-1])
        fit = linregress(x[upper], y[upper])
        return max(float(y[-1]), float(fit.intercept + fit.slope * n))

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "seconds": list(self.seconds)}

    @classmethod
    def from_dict(cls, d: Mapping) -> CostCurve:
        return cls(tuple(int(n) for n in d["sizes"]), tuple(float(s) for s in d["seconds"]))
