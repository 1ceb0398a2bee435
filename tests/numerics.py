"""Error bounds for comparing float32 reductions with a float64 reference.

XLA chooses the order in which it adds the terms of a reduction, and that order depends on
the CPU's vector width (AVX2 and AVX-512 split a sum of 20 values differently). A float32
sum is therefore reproducible on one machine kind only, and a comparison with a fixed
relative tolerance holds only where no terms cancel. These helpers give the bound that holds
for any order instead (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed.,
eq. 4.4): for n float32 terms x_i summed in any order,

    |fl(sum x_i) - sum x_i| <= gamma(n - 1) * sum |x_i|,   gamma(k) = k u / (1 - k u),

with u = 2**-24 the unit roundoff of float32. The reference is computed in float64 from the
same float32 inputs, so its own error is negligible beside this bound.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2  # u = 2**-24


def gamma(k: int) -> float:
    """Higham's gamma_k = k u / (1 - k u) for float32: the relative bound of k roundings."""
    return k * UNIT_ROUNDOFF / (1 - k * UNIT_ROUNDOFF)


def mean_bound(terms: np.ndarray, axis: tuple[int, ...] | int, extra_ops: int = 0) -> np.ndarray:
    """Worst-case absolute error of a float32 mean of `terms` over `axis`, in any order.

    n - 1 additions (gamma(n - 1) times the sum of magnitudes), one division by n, and
    `extra_ops` more roundings per term (e.g. 1 where each term is itself a float32 product).
    Returns the bound with `axis` reduced, shaped like the mean.
    """
    t = np.abs(np.asarray(terms, np.float64))
    n = int(np.prod([t.shape[a] for a in np.atleast_1d(axis)]))
    return gamma(n + extra_ops) * t.sum(axis=axis) / n


def assert_within(actual: np.ndarray, desired: np.ndarray, bound: np.ndarray) -> None:
    """Elementwise |actual - desired| <= bound, naming the worst element on failure."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    excess = np.abs(actual - desired) - np.broadcast_to(bound, actual.shape)
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    assert excess[worst] <= 0, (
        f"float32 reduction outside its rounding bound at {worst}: got {actual[worst]!r}, "
        f"float64 reference {desired[worst]!r}, bound {np.broadcast_to(bound, actual.shape)[worst]:.3g}"
    )
