"""gunicorn's logger class for the production config: the access log only when asked, and never
with a token in it.

Why a class of our own. gunicorn turns its access log on not only when `accesslog` is set but
whenever a logging config dict is given, and docker/gunicorn.conf.py gives one (so that every line
is JSON). With stock gunicorn, "access log off by default" was therefore not true: every request
line was written, viewer URLs included, and those carry the signed viewer token in their path
(/viewer/<token>, /explain/<token>, /studies/<token>). It also cost every hook call the building
of the access-log atoms (~2 % of a worker's time in the hooks bench) for a line nobody wanted.

Here the access log is written only when `accesslog` is set (CDS_WEB_ACCESS_LOG=1), and then with
the token path segments and query strings replaced, and without the request's credentials or
environment among the format's atoms.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn import glogging

#: Routes whose next path segment is a signed token (cds.viewer.blueprint).
_TOKEN_SEGMENT = re.compile(r"(/(?:viewer|explain|studies)/)[^/?#\s]+")
_QUERY = re.compile(r"\?[^\s#]*")
REDACTED = "<redacted>"
#: Request headers never offered to the access-log format.
_SECRET_HEADERS = frozenset({"{authorization}i", "{proxy-authorization}i", "{cookie}i", "{x-api-key}i"})


def redact_url(text: str) -> str:
    """A request line, path or referer with its token segments and query string replaced."""
    return _QUERY.sub("?" + REDACTED, _TOKEN_SEGMENT.sub(r"\g<1>" + REDACTED, text))


class AccessLogger(glogging.Logger):
    """gunicorn.glogging.Logger with the access log tied to `accesslog` and redacted atoms."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if not self.cfg.accesslog:
            return
        super().access(resp, req, environ, request_time)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        safe = {
            key: value
            for key, value in atoms.items()
            if key not in _SECRET_HEADERS and not key.endswith("}e")  # environ: HTTP_AUTHORIZATION
        }
        for key in ("r", "U", "f"):
            if isinstance(safe.get(key), str):
                safe[key] = redact_url(safe[key])
        if safe.get("q"):
            safe["q"] = REDACTED
        return safe
