"""Network structure declared as data (as timm's ``feature_info``): the parts of a trunk in order,
the named stages they form, each stage's output reduction and channels.

Everything that needs to know a ResNet50's layout (building its trunk, folding its BatchNorms, the
detector's C4 split and frozen stages, the saliency sanity check, PUL's checkpoints and activation
statistics) reads it from :data:`RESNET50` instead of spelling indices out. A new kind of backbone
(a ViT, say) declares its own :class:`Architecture` and registers it in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """A named group of consecutive trunk parts: ``reduction`` is its output stride with no
    dilation, ``channels`` its output channels, ``weighted`` the parts that hold weights (default:
    all of them)."""

    name: str
    parts: tuple[str, ...]
    reduction: int
    channels: int
    weighted: tuple[str, ...] | None = None

    @property
    def weighted_parts(self) -> tuple[str, ...]:
        return self.parts if self.weighted is None else self.weighted


@dataclass(frozen=True)
class Architecture:
    """A trunk as an ``nn.Sequential`` of named ``parts`` (attribute names of the source network),
    grouped into ``stages`` (bottom to top); ``head``: the classifier's attribute name, if any."""

    name: str
    parts: tuple[str, ...]
    stages: tuple[Stage, ...]
    head: str | None = None

    def index(self, part: str) -> int:
        """Position of ``part`` in the trunk."""
        return self.parts.index(part)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def stage_number(self, part: str) -> int:
        """1-based number of the stage ``part`` belongs to (1 = the stem)."""
        return next(i for i, s in enumerate(self.stages, 1) if part in s.parts)

    @property
    def channels(self) -> int:
        """Channels of the trunk's output (its last stage)."""
        return self.stages[-1].channels


RESNET50 = Architecture(
    name="resnet50",
    parts=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    stages=(
        Stage("stem", ("conv1", "bn1", "relu", "maxpool"), 4, 64, weighted=("conv1", "bn1")),
        Stage("layer1", ("layer1",), 4, 256),
        Stage("layer2", ("layer2",), 8, 512),
        Stage("layer3", ("layer3",), 16, 1024),
        Stage("layer4", ("layer4",), 32, 2048),
    ),
    head="fc",
)

#: Declared architectures by the name a :class:`~discovery.backbone.Backbone` records.
ARCHITECTURES = {arch.name: arch for arch in (RESNET50,)}
