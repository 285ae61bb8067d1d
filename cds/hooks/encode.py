"""Serialising a CDS Hooks response without re-encoding cached FHIR resources on every call.

A card's create suggestion carries a whole DiagnosticReport (25 Observations, ~80 kB of JSON).
It never changes for a given analysis, so its JSON text is cached next to the validated dict
(cds.hooks.presenter) and spliced into the response: each resource is replaced by a placeholder
string that embeds a per-process random nonce (so no card text can collide with it), the rest is
encoded normally (orjson: several times faster than json for card-sized objects), and the
placeholder is swapped for the cached text (UTF-8 bytes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

_NONCE = uuid.uuid4().hex

Fragment = Callable[[Mapping[str, Any]], str | bytes | None]


def _swap_resources(
    card: Mapping[str, Any], fragment: Fragment, spliced: dict[bytes, bytes]
) -> dict[str, Any]:
    suggestions = card.get("suggestions")
    if not suggestions:
        return dict(card)
    new_suggestions = []
    for suggestion in suggestions:
        actions = []
        for action in suggestion.get("actions", ()):
            resource = action.get("resource")
            text = fragment(resource) if isinstance(resource, Mapping) else None
            if text is not None:
                placeholder = f"cds-fragment-{_NONCE}-{len(spliced)}"
                spliced[json.dumps(placeholder).encode()] = text if isinstance(text, bytes) else text.encode()
                action = {**action, "resource": placeholder}
            actions.append(action)
        new_suggestions.append({**suggestion, "actions": actions})
    return {**card, "suggestions": new_suggestions}


def encode_cards(cards: list[dict[str, Any]], fragment: Fragment) -> bytes:
    """`{"cards": [...]}` as compact UTF-8 JSON (orjson), cached resource texts spliced in."""
    spliced: dict[bytes, bytes] = {}
    body = orjson.dumps({"cards": [_swap_resources(c, fragment, spliced) for c in cards]})
    for placeholder, text in spliced.items():
        body = body.replace(placeholder, text, 1)
    return body
