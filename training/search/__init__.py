"""The HPO engine: a search space declared as data, forced extremes, coverage-aware TPE,
wasted-trial accounting, MLflow tracking and a resumable, crash-safe Optuna study.

Entry points (see docs/architecture.md, "HPO engine"): :class:`training.search.study.StudySpec`,
:func:`training.search.study.run_study`, and for scale-out the pieces it is made of
(``prepare_study``, ``run_worker``, ``finalize_study``).
"""
