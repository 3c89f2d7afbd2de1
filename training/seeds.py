"""The fresh seeds of a study: the one derivation behind the HPO refit and the transfer stages.

``tierhpo hpo`` retrains its best configuration with ``fresh_seeds(seed, hpo.refit_seeds)``;
``tierhpo cross-budget`` / ``cross-tier`` train every cell of a source study with
``fresh_seeds(seed, cross_*.seeds)``. One derivation means the diagonal cell (the study's own
configuration on its own data) asks for the seeds the refit already trained, and reads them from
``refit.json`` instead of training them again (training.transfer).
"""

from __future__ import annotations

import numpy as np

SALT = 0x5EED  # fixed: changing it changes every refit and every transfer cell


def fresh_seeds(study_seed: int, n: int) -> list[int]:
    """``n`` distinct seeds derived from ``study_seed`` (numpy ``SeedSequence``), none equal to it:
    the study's own seed won the search, so its result is biased upwards (winner's curse).
    A prefix is stable: ``fresh_seeds(s, k) == fresh_seeds(s, n)[:k]`` for ``k <= n``."""
    seeds: list[int] = []
    state = np.random.SeedSequence([study_seed, SALT]).generate_state(2 * n + 1, dtype=np.uint32)
    for value in (int(v) & 0x7FFFFFFF for v in state):
        if value != study_seed and value not in seeds and len(seeds) < n:
            seeds.append(value)
    return seeds
