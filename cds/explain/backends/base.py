"""What every rationale backend provides: chat messages in, one generated text out.

Why a protocol and not a base class: the OpenAI-compatible client and the local transformers model
share nothing but this call; tests substitute a scripted fake at exactly this boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cds.domain import Level
from cds.errors import UpstreamError


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Generation:
    """One draft: the text and what producing it cost."""

    text: str
    seconds: float
    new_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if not self.new_tokens or self.seconds <= 0:
            return None
        return self.new_tokens / self.seconds


class BackendError(UpstreamError):
    """The language model could not produce a draft (endpoint down, timeout, model missing)."""


class RationaleBackend(Protocol):
    @property
    def name(self) -> str:
        """'local' or 'openai' (recorded with every rationale)."""
        ...

    @property
    def model_id(self) -> str:
        """Which model wrote the draft, e.g. a package name and version or the endpoint's model name."""
        ...

    def generate(
        self, messages: Sequence[ChatMessage], *, allowed_levels: Sequence[Level], max_new_tokens: int
    ) -> Generation:
        """Greedy completion of the chat; `allowed_levels` lets a backend ban other level names."""
        ...
