"""The one exception type that reaches a user as a one-line, actionable message."""


class TierHpoError(Exception):
    """A problem the user can fix (bad input, unknown tier, corrupt study, ...).

    The CLI prints ``tierhpo: error: <message>`` and exits with status 2, no traceback.
    Keep messages to one line that says what is wrong and what to do about it.
    """
