"""OpenAI-compatible chat completions over HTTP (vLLM, TGI, llama.cpp server, hosted APIs).

Why plain `requests` and not an SDK: one POST with a timeout is all that is needed, and errors must
map onto the product's own BackendError (502 at the edge) without leaking the API key, which is
only ever sent in the Authorization header and never logged or put into an error message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import urlparse

import requests

from cds.domain import Level
from cds.explain.backends.base import BackendError, ChatMessage, Generation


class OpenAIBackend:
    """Greedy (temperature 0) chat completion against `{base_url}/chat/completions`."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 30.0) -> None:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BackendError("CDS_RATIONALE_URL must be an http(s) URL")
        if not model:
            raise BackendError("CDS_RATIONALE_MODEL must name the endpoint's model")
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._api_key = api_key
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        return "openai"

    @property
    def model_id(self) -> str:
        return self._model

    def generate(
        self, messages: Sequence[ChatMessage], *, allowed_levels: Sequence[Level], max_new_tokens: int
    ) -> Generation:
        del allowed_levels  # an HTTP endpoint cannot take a logits processor; the verifier still checks
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {
            "model": self._model,
            "messages": [m.to_json() for m in messages],
            "temperature": 0,
            "max_tokens": max_new_tokens,
            "n": 1,
        }
        start = time.perf_counter()
        try:
            resp = requests.post(self._url, json=body, headers=headers, timeout=self._timeout_s)
        except requests.Timeout as exc:
            raise BackendError(f"rationale endpoint timed out after {self._timeout_s:g} s") from exc
        except requests.RequestException as exc:
            raise BackendError(f"rationale endpoint unreachable ({type(exc).__name__})") from exc
        seconds = time.perf_counter() - start
        if resp.status_code != 200:
            raise BackendError(f"rationale endpoint answered HTTP {resp.status_code}")
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError("rationale endpoint returned no chat completion") from exc
        if not isinstance(text, str):
            raise BackendError("rationale endpoint returned no text")
        usage = data.get("usage") if isinstance(data, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        completion = usage.get("completion_tokens")
        prompt = usage.get("prompt_tokens")
        return Generation(
            text=text,
            seconds=seconds,
            new_tokens=completion if isinstance(completion, int) else None,
            prompt_tokens=prompt if isinstance(prompt, int) else None,
        )
