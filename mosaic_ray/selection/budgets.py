"""Budgets: the one place that says what a budget is and checks it (paper §3.2.2).

A budget is a number of pool clips to select. A config may give it as an integer clip count
or as a fraction of the pool in (0, 1]; :func:`resolve_budgets` turns a list of either into
sorted, distinct clip counts for a given pool. Every other module (the config validator, the
strategies, the allocator) calls these functions instead of re-checking budgets itself.
"""

from __future__ import annotations

from mosaic_ray.errors import UsageError
import operator
from typing import Any, Iterable

import numpy as np

__all__ = ["BudgetError", "budget_count", "check_budget_spec", "resolve_budgets"]


class BudgetError(UsageError, ValueError):
    """A budget is not a clip count / pool fraction, or does not fit the pool."""


def budget_count(budget: Any, name: str = "budget") -> int:
    """``budget`` as a non-negative Python int (an integer clip count).

    Args:
        budget: an int (or an integer-valued float / numpy integer).
        name: what to call it in the error message.

    Raises:
        BudgetError: a bool, a non-integer value, or a negative one.
    """
    if isinstance(budget, (bool, np.bool_)):
        raise BudgetError(f"{name} must be an integer clip count, got {budget!r}")
    try:
        b = operator.index(budget)
    except TypeError:
        if isinstance(budget, (float, np.floating)) and float(budget).is_integer():
            b = int(budget)
        else:
            raise BudgetError(f"{name} must be an integer clip count, got {budget!r}") from None
    if b < 0:
        raise BudgetError(f"{name} must be >= 0, got {b}")
    return int(b)


def check_budget_spec(budget: Any) -> int | float:
    """Check one configured budget: a positive int (clips) or a float in (0, 1] (pool fraction).

    Returns:
        The budget unchanged (int or float).

    Raises:
        BudgetError: bools, strings, non-positive values, floats above 1.
    """
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise BudgetError(f"budget {budget!r} is neither a clip count nor a pool fraction")
    if isinstance(budget, (float, np.floating)):
        if not (0 < float(budget) <= 1):
            raise BudgetError(f"budget {budget!r}: a fraction of the pool must lie in (0, 1]")
        return float(budget)
    if int(budget) <= 0:
        raise BudgetError(f"budget {budget!r} must be a positive clip count")
    return int(budget)


def resolve_budgets(budgets: Iterable[Any], pool_size: int, fractions: bool = True) -> list[int]:
    """Budgets as sorted, distinct clip counts for a pool of ``pool_size`` clips.

    Args:
        budgets: ints are clip counts; with ``fractions``, floats in (0, 1] are fractions of
            the pool (rounded to the nearest clip); without, only clip counts are accepted
            (what a strategy's ``select`` takes).
        pool_size: clips in the pool.

    Raises:
        BudgetError: no budgets, a bad value (see :func:`check_budget_spec` /
            :func:`budget_count`), a fraction that rounds to 0 clips, or a budget larger than
            the pool (the message names both).
    """
    out: set[int] = set()
    for b in budgets:
        if fractions:
            spec = check_budget_spec(b)
            n = int(round(spec * pool_size)) if isinstance(spec, float) else spec
        else:
            n = budget_count(b)
            if n == 0:
                raise BudgetError(f"budget {b!r} must be a positive clip count")
        if n < 1:
            raise BudgetError(f"budget {b} is 0 clips for a pool of {pool_size}")
        if n > pool_size:
            raise BudgetError(f"budget {b} ({n} clips) exceeds the pool size {pool_size}")
        out.add(n)
    if not out:
        raise BudgetError("no budgets given")
    return sorted(out)
