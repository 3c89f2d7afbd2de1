"""The one exception type that reaches a user as a one-line, actionable message."""

from __future__ import annotations

from typing import Any

from common import limits


class TierHpoError(Exception):
    """A problem the user can fix (bad input, unknown tier, corrupt study, ...).

    The CLI prints ``tierhpo: error: <message>`` and exits with status 2, no traceback.
    Keep messages to one line that says what is wrong and what to do about it; quote user
    values through :func:`shorten`.
    """


def shorten(value: Any, limit: int | None = None) -> str:
    """``repr(value)`` (``str`` for non-strings' own text) on one line, cut to ``limit`` characters.

    The one helper for quoting a value in an error message: a 50 MB cell or line never becomes
    a 50 MB message. Cut values end with ``...(N chars)`` so the reader knows how long it was.
    """
    limit = limit or limits.max_value_chars()
    full = len(value) if isinstance(value, (str, bytes)) else None
    if full is not None:
        value = value[: 2 * limit]  # never build the repr of a huge value
    text = repr(value) if isinstance(value, (str, bytes)) else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) <= limit and (full is None or full <= 2 * limit):
        return text
    return f"{text[: max(limit - 16, 8)]}...({full or len(text)} chars)"
