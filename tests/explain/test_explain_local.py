"""Local backend pieces that need no model weights: card, chunk assembly, level ban, availability."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cds.config import Settings
from cds.domain import Level
from cds.errors import ModelError
from cds.explain.backends import local
from cds.explain.backends.local import LevelBan, ModelCard, assemble_gguf


def test_committed_card_pins_six_chunks() -> None:
    card = ModelCard.read()
    assert len(card.parts) == 6 and len(card.gguf_sha256) == 64
    assert all(p.version == "0.9.0" and len(p.sha256) == 64 for p in card.parts)
    assert "Qwen2.5-Coder-0.5B-Instruct" in card.model_id


def _fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes]) -> Path:
    parts = []
    for i, data in enumerate(chunks, start=1):
        pkg = tmp_path / "site" / f"fake_llm_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append(
            {
                "package": f"fake-llm-part{i}",
                "version": "1.0",
                "module": f"fake_llm_part{i}",
                "file": f"data/part{i:02d}.bin",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    card = {
        "model_id": "fake",
        "gguf": {"sha256": hashlib.sha256(b"".join(chunks)).hexdigest(), "parts": parts},
    }
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    return path


def test_assembly_checks_every_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card_path = _fake_parts(tmp_path, monkeypatch, [b"GGUF" + b"a" * 100, b"b" * 50])
    card = ModelCard.read(card_path)
    out = assemble_gguf(card, tmp_path / "cache")
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50
    assert assemble_gguf(card, tmp_path / "cache") == out  # cached
    (tmp_path / "site" / "fake_llm_part2" / "data" / "part02.bin").write_bytes(b"tampered")
    out.unlink()
    with pytest.raises(ModelError, match="fake-llm-part2 fails its sha256"):
        assemble_gguf(card, tmp_path / "cache")
    assert not out.exists() and not list((tmp_path / "cache").glob("*.tmp*"))


def test_unreadable_card(tmp_path: Path) -> None:
    (tmp_path / "card.json").write_text("{}")
    with pytest.raises(ModelError):
        ModelCard.read(tmp_path / "card.json")


def test_availability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    assert not local.is_available(Settings(rationale_model_file=gguf))
    gguf.write_bytes(b"GGUF")
    assert local.is_available(Settings(rationale_model_file=gguf))
    monkeypatch.setattr(local, "CARD_PATH", _fake_parts(tmp_path, monkeypatch, [b"x"]))
    assert local.is_available(Settings())


class _DigitTokenizer:
    """Single-character tokens, as Qwen writes digits: enough to exercise the level ban."""

    def __init__(self) -> None:
        self.alphabet = [*"LS0123456789-: abc", "\n"]

    def get_vocab(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.alphabet)}

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(ch) for ch in text]


def test_level_ban_allows_only_present_levels() -> None:
    import torch

    tok = _DigitTokenizer()
    ban = LevelBan(tok, [Level.L4_L5, Level.L5_S1])

    def allowed_after(text: str) -> set[str]:
        ids = torch.tensor([tok.encode(text)])
        scores = ban(ids, torch.zeros(1, len(tok.alphabet)))
        return {tok.alphabet[i] for i in range(len(tok.alphabet)) if scores[0, i] != float("-inf")}

    after_l = allowed_after("a L")
    assert {"4", "5"} <= after_l and not {"1", "2", "3"} & after_l
    assert "5" in allowed_after("L4-L") and "3" not in allowed_after("L4-L")
    assert "S" in allowed_after("L5-") and "6" not in allowed_after("L5-")
    assert allowed_after("abc") == set(tok.alphabet)  # no level being written: nothing banned


def test_stopping_at_the_end_of_the_paragraph() -> None:
    import torch

    from cds.explain.backends.local import _StopAtLineEnd

    tok = _DigitTokenizer()
    prompt = tok.encode("abc\n")
    stop = _StopAtLineEnd(tok, prompt_len=len(prompt))

    def stops(generated: str) -> bool:
        ids = torch.tensor([prompt + tok.encode(generated)])
        return bool(stop(ids, None)[0])

    assert not stops("\n")  # a leading line break before any text does not end the answer
    assert not stops("L4-L5: a")
    assert stops("L4-L5: a\n")


def test_int8_option_quantizes_linear_layers() -> None:
    import torch

    from cds.explain.backends.local import _int8

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).to(
        torch.bfloat16
    )
    q = _int8(model)
    assert "Quantized" in type(q[0]).__name__ or "quantized" in type(q[0]).__module__
    out = q(torch.randn(3, 8))
    assert out.shape == (3, 2) and out.dtype == torch.float32


def test_int8_setting() -> None:
    assert Settings.from_env({"CDS_RATIONALE_INT8": "true"}).rationale_int8 is True
    assert Settings.from_env({}).rationale_int8 is False
