"""The HPO engine: a search space declared as data, forced extremes, coverage-aware TPE,
wasted-trial accounting, MLflow tracking and a resumable, crash-safe Optuna study.

Entry points (see docs/architecture.md, "HPO engine"): :class:`training.search.spec.StudySpec`,
:func:`training.search.study.run_study`, and for scale-out the pieces it is made of
(``study.open_study``, ``study.run_worker``, ``results.finalize_study``; ``workers.run_workers``
runs several worker processes).
"""
