"""Flask's cookie sessions, minus their cost on requests that carry no session cookie.

Flask opens a session on every request, and with a SECRET_KEY set its default interface builds an
itsdangerous serializer (key derivation objects and all) before it even looks for the cookie.
CDS Hooks calls never carry one (EHRs authenticate with a bearer JWT), so on the hook hot path
that was pure overhead. This interface behaves exactly like Flask's (same cookie, signature,
salt, lifetime) but skips the serializer when there is no cookie to read, and skips the cookie
bookkeeping when an empty session was never touched.
"""

from __future__ import annotations

from typing import Any

from flask.sessions import SecureCookieSession, SecureCookieSessionInterface


class LazyCookieSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Any, request: Any) -> SecureCookieSession | None:
        if not app.secret_key:
            return None
        if "HTTP_COOKIE" not in request.environ or not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        if not session and not session.modified and not session.accessed:
            return  # what Flask does for an untouched empty session: nothing
        super().save_session(app, session, response)
