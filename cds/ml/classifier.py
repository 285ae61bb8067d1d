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

``last_conv`` names the last convolution block. ``cam_layer`` is where Grad-CAM (cds/explain)
attaches: ``last_conv`` for the plain head (version 1), the evidence map for the evidence head.

Evidence head (version 2, ``ClassifierConfig.evidence_head``): a 1x1 convolution on the last
block gives one log-evidence map E_o per output o; the module ``evidence`` outputs S_o = exp(E_o)
and the logit is log(mean over pixels of S_o) (log-sum-exp pooling, a smooth maximum) plus a
bias and the summary term. Why this shape:

* Grad-CAM at ``evidence`` is exactly that output's own map: the gradient of output o reaches
  only channel o of S, with a positive weight equal at every pixel, so the map is S_o itself
  (positive, never an empty map) -- condition-specific by construction, unlike a shared GAP
  feature layer whose maps all answered to the dural sac.
* A smooth maximum lets one small narrowed region (a lateral recess) decide the output, and
  its spatial softmax is what the localisation loss in cds/train/classifier.py pushes into the
  condition's cause region, so the pointing game and the training objective agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cds.domain import Condition
from cds.errors import ModelError
from cds.ml.loading import VerifiedModelCache
from cds.ml.spec import ModelSpec

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
    #: Per-output evidence maps pooled by log-sum-exp (version 2) instead of GAP + linear head.
    evidence_head: bool = False
    #: 2x max-pooling steps between blocks (None: one after every block but the last).
    pools: int | None = None
    #: Auxiliary regression outputs (training only; see cds.train.classifier_data.MEASURES).
    num_measures: int = 0
    #: Average-pool the crop by this factor before the first block (2: 96 px at 0.8 mm -> 48 px at
    #: 1.6 mm). Why: a quarter of the convolution cost on the shared CPU; the summaries still see
    #: the full-resolution crop.
    input_pool: int = 1

    @property
    def num_summaries(self) -> int:
        return 2 * self.in_channels if self.summary_features else 0

    @property
    def num_outputs(self) -> int:
        return len(Condition) * len(HEADS)

    @property
    def num_pools(self) -> int:
        return len(self.widths) - 1 if self.pools is None else self.pools


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(groups, cout), cout),
        nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(groups, cout), cout),
        nn.SiLU(inplace=True),
    )


class EvidenceMap(nn.Module):
    """1x1 convolution to one log-evidence map per output, returned as exp (positive maps).

    Clamped to +-30 so that exp and the mean over pixels stay finite in float32.
    """

    def __init__(self, cin: int, outputs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, outputs, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.conv(features).clamp(-30.0, 30.0))


@dataclass(frozen=True)
class TrainingOutputs:
    """What the training losses need from one forward pass (the product only uses ``logits``)."""

    logits: torch.Tensor  # (B, outputs), before temperature
    log_evidence: torch.Tensor | None  # (B, outputs, h, w) E = log S; None for the plain head
    measures: torch.Tensor | None  # (B, num_measures); None without the auxiliary head


class LevelClassifier(nn.Module):
    """Conv blocks with max-pooling between them, then either global average pooling and one
    linear layer (version 1) or per-output evidence maps pooled by log-sum-exp (version 2).

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
        if c.evidence_head:
            self.evidence = EvidenceMap(cin, c.num_outputs)
            self.bias = nn.Parameter(torch.zeros(c.num_outputs))
            self.head: nn.Linear | None = (
                nn.Linear(c.num_summaries, c.num_outputs) if c.summary_features else None
            )
        else:
            self.head = nn.Linear(cin + c.num_summaries, c.num_outputs)
        self.measure_head = nn.Linear(cin + c.num_summaries, c.num_measures) if c.num_measures > 0 else None
        self.register_buffer("temperature", torch.ones(c.num_outputs))

    @property
    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM explains (see the module docstring)."""
        return self.evidence if self.config.evidence_head else self.last_conv

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.input_pool > 1:
            x = nn.functional.avg_pool2d(x, self.config.input_pool)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < self.config.num_pools:
                x = nn.functional.max_pool2d(x, 2)
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

    def training_outputs(self, x: torch.Tensor) -> TrainingOutputs:
        feats = self.features(x)
        summ = self.summary_norm(self.summaries(x)) if self.config.summary_features else None
        pooled = self.dropout(feats.mean(dim=(-2, -1)))
        if summ is not None:
            pooled = torch.cat([pooled, summ], dim=1)
        measures = self.measure_head(pooled) if self.measure_head is not None else None
        if not self.config.evidence_head:
            assert self.head is not None  # built for the plain head
            return TrainingOutputs(self.head(pooled), None, measures)
        evidence = self.evidence(feats)
        logits = torch.log(evidence.mean(dim=(-2, -1))) + self.bias
        if self.head is not None and summ is not None:
            logits = logits + self.head(summ)
        return TrainingOutputs(logits, torch.log(evidence), measures)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (batch, conditions * 2); sigmoid gives the probabilities."""
        if not self.config.evidence_head:
            f = self.dropout(self.features(x).mean(dim=(-2, -1)))
            if self.config.summary_features:
                f = torch.cat([f, self.summary_norm(self.summaries(x))], dim=1)
            assert self.head is not None  # built for the plain head
            return self.head(f) / self.get_buffer("temperature")
        evidence = self.evidence(self.features(x))
        logits = torch.log(evidence.mean(dim=(-2, -1))) + self.bias
        if self.head is not None:
            logits = logits + self.head(self.summary_norm(self.summaries(x)))
        return logits / self.get_buffer("temperature")

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
            evidence_head=bool(arch.get("evidence_head", False)),
            pools=None if arch.get("pools") is None else int(arch["pools"]),
            num_measures=int(arch.get("num_measures", 0)),
            input_pool=int(arch.get("input_pool", 1)),
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


_LOADED: VerifiedModelCache[LevelClassifier, LoadedClassifier] = VerifiedModelCache(
    build_classifier, LoadedClassifier, freeze=False
)


def load_classifier(name: str, models_dir: Path | None = None, device: str | None = None) -> LoadedClassifier:
    """Verified (sha256 from the card), loaded once per process, eval mode, CPU unless CUDA."""
    return _LOADED.get(name, models_dir, device)


def clear_cache() -> None:
    _LOADED.clear()
