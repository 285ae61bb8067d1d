"""Stage 2 network: a small multi-label CNN over one level's axial crop.

Input: a (channels, H, W) crop centred on the dural sac of one disc level, in a canonical frame
(rows run anterior -> posterior, columns run patient right -> left): a few axial T2 slices around
the level's narrowest point plus the axial segmentation's class probabilities. Output: for each
of the five conditions two ordinal logits, P(grade >= moderate) ("present", the stage-2 target)
and P(grade = severe), which the grading stage turns into a severity distribution.

Why ordinal heads instead of a 3-way softmax: severity is ordered, and "present" must be its own
calibrated probability (the AUROC target); two sigmoids give both, with one shared trunk.
Why small: one crop per level, five levels per study, on a shared 2-core CPU in well under a
second; the crops are already centred and scaled, so little capacity is needed.

``last_conv`` names the last convolution block for Grad-CAM (cds/explain).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cds.domain import Condition
from cds.errors import ModelError
from cds.ml.spec import ModelSpec, model_dir, read_card

ARCHITECTURE = "LevelClassifier"
#: Output order: for each condition in Condition order, (present, severe) logits.
HEADS = ("present", "severe")


def output_labels() -> tuple[str, ...]:
    return tuple(f"{c.value}:{h}" for c in Condition for h in HEADS)


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 6
    widths: tuple[int, ...] = (24, 48, 96, 128)
    groups: int = 8
    #: Also feed the head each input channel's mean over the left and the right half of the crop.
    summary_features: bool = True

    @property
    def num_summaries(self) -> int:
        return 2 * self.in_channels if self.summary_features else 0

    @property
    def num_outputs(self) -> int:
        return len(Condition) * len(HEADS)


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(groups, cout), cout),
        nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(groups, cout), cout),
        nn.SiLU(inplace=True),
    )


class LevelClassifier(nn.Module):
    """Conv blocks with max-pooling between them, global average pooling, one linear layer.

    ``temperature`` (one per output, a buffer saved with the weights) divides the logits: it is
    fitted on the validation split after training (temperature scaling, Guo et al. 2017) so the
    probabilities are calibrated without changing their ranking.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c = self.config
        blocks = []
        cin = c.in_channels
        for w in c.widths:
            blocks.append(_block(cin, w, c.groups))
            cin = w
        self.blocks = nn.ModuleList(blocks[:-1])
        self.last_conv = blocks[-1]
        self.dropout = nn.Dropout(0.2)
        # Batch-standardised summaries: raw channel means are small (a sac covers ~3 % of the crop).
        self.summary_norm = nn.BatchNorm1d(c.num_summaries) if c.summary_features else nn.Identity()
        self.head = nn.Linear(cin + c.num_summaries, c.num_outputs)
        self.register_buffer("temperature", torch.ones(c.num_outputs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = nn.functional.max_pool2d(block(x), 2)
        return self.last_conv(x)

    @staticmethod
    def summaries(x: torch.Tensor) -> torch.Tensor:
        """Per-channel means over the patient-right and patient-left halves of the crop.

        Why: GroupNorm normalises every sample's feature maps, which erases "how much" of a
        structure there is (the dural sac's area is what grades the canal); these 2 x C numbers
        give the head that amount directly, per side, while the convolutions see the shapes.
        """
        half = x.shape[-1] // 2
        return torch.cat([x[..., :half].mean(dim=(-2, -1)), x[..., half:].mean(dim=(-2, -1))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (batch, conditions * 2); sigmoid gives the probabilities."""
        f = self.dropout(self.features(x).mean(dim=(-2, -1)))
        if self.config.summary_features:
            f = torch.cat([f, self.summary_norm(self.summaries(x))], dim=1)
        return self.head(f) / self.temperature

    @staticmethod
    def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, 10) -> present and severe logits, each (batch, 5) in Condition order."""
        pairs = logits.reshape(logits.shape[0], len(Condition), len(HEADS))
        return pairs[..., 0], pairs[..., 1]


def build_classifier(spec: ModelSpec) -> LevelClassifier:
    arch = dict(spec.architecture)
    if arch.get("type") != ARCHITECTURE:
        raise ModelError(f"{spec.name}: expected architecture {ARCHITECTURE}, got {arch.get('type')!r}")
    try:
        config = ClassifierConfig(
            in_channels=int(arch["in_channels"]),
            widths=tuple(int(w) for w in arch["widths"]),
            groups=int(arch.get("groups", 8)),
            summary_features=bool(arch.get("summary_features", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{spec.name}: architecture does not match ClassifierConfig: {exc!r}") from exc
    if tuple(spec.labels) != output_labels():
        raise ModelError(f"{spec.name}: card labels do not match the classifier's outputs")
    return LevelClassifier(config)


@dataclass(frozen=True)
class LoadedClassifier:
    spec: ModelSpec
    network: LevelClassifier
    device: torch.device


_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], LoadedClassifier] = {}


def load_classifier(name: str, models_dir: Path | None = None, device: str | None = None) -> LoadedClassifier:
    """Verified (sha256 from the card), loaded once per process, eval mode, CPU unless CUDA."""
    from cds.ml.loading import load_verified_weights, select_device

    directory = model_dir(name, models_dir).resolve()
    key = (str(directory), device or "")
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            spec = read_card(name, models_dir)
            network = build_classifier(spec)
            load_verified_weights(network, directory, spec)
            dev = select_device(device)
            network.eval().to(dev)
            cached = LoadedClassifier(spec, network, dev)
            _CACHE[key] = cached
        return cached


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
