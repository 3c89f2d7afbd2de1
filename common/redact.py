"""The one redaction function: what of a URL (or of a text holding URLs) may be logged or written.

Used for console lines, error messages, MLflow params and ``best.json``. Hand-written (two
regular expressions) rather than SQLAlchemy's ``make_url``: it must also clean free text such
as a driver's error message, and never fail on something that is not a URL.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

# scheme://user[:password]@ -> scheme://***@ (the whole user info: user name and password)
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://)(?P<info>[^/\s?#]*)@")
# ?password=..., &sslpassword=..., ?api_key=..., &token=..., &client_secret=... -> name=***
_SECRET_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&\s#;]*(?:password|secret|token|key)[^=&\s#;]*)=)(?P<value>[^&\s#;]*)",
                           re.IGNORECASE)


def redact(text_or_url: str) -> str:
    """``text_or_url`` with every URL's user info (user name and password) replaced by ``***``
    and the value of every query parameter whose name contains ``password`` (so also
    ``sslpassword``), ``secret``, ``token`` or ``key`` replaced by ``***``; the rest (scheme,
    host, port, database, other parameters, surrounding text) is kept as it is."""
    text = _USERINFO.sub(lambda m: f"{m['head']}***@", str(text_or_url))
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}***", text)
