"""``tierhpo select --horizon H``: the grid's answer and its one champion per symbol and horizon.

``scores`` gathers what every cell (tier x budget) and every baseline predicted on the same
validation and test days: each cell's fresh refit seeds (never the study's own seed: the winner's
curse), calibrated on validation only. ``decide`` turns them into the verdicts of
``training/selection_record.py`` with the seed-aware, paired machinery of ``evaluation/``.
``registry`` names the best cell ``tierhpo-{SYMBOL}-h{H}@candidate`` and, only when it passes the
gate, ``@champion``. ``stage`` is the thin ``main()``.
"""

from pipelines.select.stage import app, main

__all__ = ["app", "main"]
