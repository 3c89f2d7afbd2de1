"""The report stage as a package (see ``stage`` for what it writes):

``params`` (the ``report`` section), ``inputs`` (declared DVC deps only; studies through ``training.search.study_outputs``),
``sections`` (per tier and horizon), ``grid`` (the answer, from the select stage's record),
``figures``, ``render`` + ``templates/`` (Markdown), ``tracking`` (MLflow), ``stage`` (``main``).
"""

from pipelines.report.stage import app, main

__all__ = ["app", "main"]
