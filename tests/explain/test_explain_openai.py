"""The OpenAI-compatible backend against a tiny local HTTP server (a real socket, no mocks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cds.config import Settings
from cds.domain import Level
from cds.explain.backends.base import BackendError, ChatMessage
from cds.explain.backends.openai import OpenAIBackend
from cds.explain.rationale import Writer, write_rationale


class _Server:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.reply: Any = None
        self.status = 200
        self.delay_s = 0.0


@pytest.fixture()
def server() -> Iterator[tuple[_Server, str]]:
    state = _Server()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.requests.append(json.loads(self.rfile.read(length)))
            state.headers.append(dict(self.headers))
            if state.delay_s:
                threading.Event().wait(state.delay_s)
            body = json.dumps(state.reply).encode() if not isinstance(state.reply, bytes) else state.reply
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _completion(text: str) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 800, "completion_tokens": 42},
    }


def test_request_shape_and_key(server: tuple[_Server, str]) -> None:
    state, url = server
    state.reply = _completion("L4-L5: severe central canal stenosis.")
    backend = OpenAIBackend(url, "qwen2.5-7b-instruct", api_key="sk-test-123", timeout_s=5)
    gen = backend.generate([ChatMessage("user", "hi")], allowed_levels=[Level.L4_L5], max_new_tokens=64)
    assert gen.text == "L4-L5: severe central canal stenosis." and gen.new_tokens == 42
    req = state.requests[0]
    assert req["model"] == "qwen2.5-7b-instruct" and req["temperature"] == 0 and req["max_tokens"] == 64
    assert req["messages"] == [{"role": "user", "content": "hi"}]
    assert state.headers[0]["Authorization"] == "Bearer sk-test-123"


@pytest.mark.parametrize(
    ("status", "reply", "needle"),
    [
        (500, {"error": "boom"}, "HTTP 500"),
        (200, b"not json", "no chat completion"),
        (200, {"choices": []}, "no chat completion"),
        (200, {"choices": [{"message": {"content": None}}]}, "no text"),
    ],
)
def test_errors_map_to_backend_error(
    server: tuple[_Server, str], status: int, reply: Any, needle: str
) -> None:
    state, url = server
    state.status, state.reply = status, reply
    backend = OpenAIBackend(url, "m", api_key="sk-secret-key", timeout_s=5)
    with pytest.raises(BackendError) as err:
        backend.generate([ChatMessage("user", "x")], allowed_levels=[], max_new_tokens=8)
    assert needle in str(err.value) and "sk-secret-key" not in str(err.value)


def test_timeout_and_unreachable(server: tuple[_Server, str]) -> None:
    state, url = server
    state.reply, state.delay_s = _completion("late"), 1.0
    with pytest.raises(BackendError, match="timed out"):
        OpenAIBackend(url, "m", timeout_s=0.2).generate([], allowed_levels=[], max_new_tokens=8)
    with pytest.raises(BackendError, match="unreachable"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout_s=1).generate(
            [], allowed_levels=[], max_new_tokens=8
        )


def test_write_rationale_through_settings(server: tuple[_Server, str], levels_json: dict[str, Any]) -> None:
    from cds.explain.backends.select import clear_cache

    state, url = server
    good = (
        "L4-L5: severe central canal stenosis, moderate left and severe right neural foraminal narrowing. "
        "L3-L4: moderate central canal stenosis, flagged as uncertain. "
        "L5-S1: no moderate or severe stenosis; the left neural foramen is normal/mild, flagged as uncertain."
    )
    state.reply = _completion(good)
    clear_cache()
    env = {
        "CDS_RATIONALE_BACKEND": "openai",
        "CDS_RATIONALE_URL": url + "/",
        "CDS_RATIONALE_MODEL": "served-model",
        "CDS_RATIONALE_API_KEY": "k",
        "CDS_RATIONALE_TIMEOUT_S": "5",
    }
    r = write_rationale(levels_json, settings=Settings.from_env(env))
    clear_cache()
    assert r.writer is Writer.MODEL and r.backend == "openai" and r.model_id == "served-model"
    assert r.text == good and r.attempts == 1
