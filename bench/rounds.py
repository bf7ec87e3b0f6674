"""How many rounds each measure of `make bench` alternates, and why that many.

A measure's interval is the min .. max of its per-round ratios. Two runs of a measure whose rounds are
exchangeable (no drift between the runs, only noise) still give disjoint intervals with chance
``disjoint_chance(n) = 2 / C(2n, n)``: all n rounds of one run below all n of the other, either way.
With 3 rounds that is 10% per measure, so a dozen stable measures would show one or two apart between two
runs (two did, 2026-12-02); with 5 rounds it is 0.8% per measure. An interval apart at 5 rounds is a
real move of the machine or of the code, not bad luck.

>>> round(disjoint_chance(3), 3), round(disjoint_chance(5), 4)
(0.1, 0.0079)
"""

from __future__ import annotations

from math import comb

ROUNDS = 5  # every measure with rounds: overhead, training, anchors, chunked_loss, kd_vs_trl


def disjoint_chance(rounds: int) -> float:
    """The chance that two runs of ``rounds`` exchangeable rounds each give disjoint min .. max intervals."""
    return 2 / comb(2 * rounds, rounds)
