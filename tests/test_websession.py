"""The lazy session interface keeps Flask's cookie sessions working (set, read back, cleared)."""

from __future__ import annotations

from flask import Flask, session

from cds.websession import LazyCookieSessionInterface


def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "test-secret"
    app.session_interface = LazyCookieSessionInterface()

    @app.get("/set")
    def set_value() -> str:
        session["n"] = 7
        return "ok"

    @app.get("/get")
    def get_value() -> str:
        return str(session.get("n"))

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "ok"

    @app.get("/none")
    def untouched() -> str:
        return "ok"

    return app


def test_cookie_session_round_trip_and_no_cookie_when_untouched() -> None:
    client = _app().test_client()
    assert "Set-Cookie" not in client.get("/none").headers
    assert client.get("/get").text == "None"
    assert "session=" in client.get("/set").headers["Set-Cookie"]
    assert client.get("/get").text == "7"
    client.get("/clear")
    assert client.get("/get").text == "None"


def test_a_forged_cookie_is_an_empty_session() -> None:
    client = _app().test_client()
    client.set_cookie("session", "forged.value.sig")
    assert client.get("/get").text == "None"


def test_without_a_secret_key_there_is_no_session() -> None:
    app = _app()
    app.secret_key = None
    app.config["SECRET_KEY"] = None
    assert app.session_interface.open_session(app, app.test_request_context().request) is None
