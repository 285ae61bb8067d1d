"""Escaping text for GitHub-flavoured markdown in card `detail`.

Anything not written by this module (model-generated rationale, failure reasons, study
descriptions typed at a modality) could contain markdown or HTML that an EHR would render: a
link that looks like ours, an image beacon, a broken table. Every such string passes through
`escape` before it reaches a card.
"""

from __future__ import annotations

import re

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:])")
_WS = re.compile(r"\s+")


def escape(text: str, max_chars: int = 500) -> str:
    """One line of inert text: HTML entities, markdown punctuation backslash-escaped, capped."""
    text = _WS.sub(" ", text).strip()[:max_chars]
    text = "".join(_HTML.get(ch, ch) for ch in text)
    # '&' was turned into an entity above; its ';' and '#' must stay entity syntax, so escape
    # markdown punctuation only outside entities.
    parts = re.split(r"(&(?:amp|lt|gt|quot);)", text)
    return "".join(p if p.startswith("&") and p.endswith(";") else _MD_SPECIAL.sub(r"\\\1", p) for p in parts)
