"""PUL's networks: the student (trunk + projector + prediction head), the frozen teacher, the losses and the optimiser."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..architecture import RESNET50
from ..backbone import Backbone, BackboneInfo, pooled_features
from ..backbones import PROJECTOR_PREFIX
from ..resnet import backbone_from_state
from ..sampling import derive_seed
from .data import PULError

if TYPE_CHECKING:
    from .config import PULConfig

#: PUL trains the standard ResNet50 (no dilation), as the weights were trained; LOST runs them at 16.
TRAIN_STRIDE = 32
#: Width of the frozen random prediction head of a headless base.
HEADLESS_CLASSES = 1000


class Projector(nn.Sequential):
    """Two linear layers ``features -> width -> classes`` with a ReLU between (pooled features in,
    logits out; ``features`` is the base's channel count, 2048 for the ResNet50s)."""

    def __init__(self, classes: int, width: int = 256, features: int = 2048):
        super().__init__(nn.Linear(features, width), nn.ReLU(inplace=True), nn.Linear(width, classes))


class PULStudent(nn.Module):
    """The model under training: ``forward(x (B,3,S,S))`` -> ``(projector logits (B,C), prediction logits (B,K))``.

    ``head`` is the base's 1000-way ``fc`` (trained) or, for a headless base, the frozen random head
    shared with the teacher.
    """

    def __init__(self, trunk: nn.Module, head: nn.Linear, projector: Projector):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.trunk, x)
        return self.projector(pooled), self.head(pooled)


class PULTeacher(nn.Module):
    """The frozen base: ``forward(x)`` -> prediction logits ``(B, K)``."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.trunk, x))


def random_head(seed: int, classes: int = HEADLESS_CLASSES, features: int = 2048) -> nn.Linear:
    """The frozen prediction head of a headless base: ``nn.Linear(features, 1000)`` (``features``:
    the base's channel count) with PyTorch's default init drawn from a generator seeded by ``(seed, "head")``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head"))
        head = nn.Linear(features, classes)
    return head.requires_grad_(False)


def build_models(base: Backbone, classes: int, width: int, seed: int) -> tuple[PULStudent, PULTeacher]:
    """Student and teacher from a loaded (frozen, eval-mode) base.

    Both stay in eval mode for the whole run (BatchNorm uses the base's running statistics), so
    at step 0 they compute bit-identical prediction logits. The student's trunk and ``fc`` are
    trainable copies; the projector is initialised from ``(seed, "projector")``.
    """
    if base.fc is not None:
        teacher_head = base.fc
        student_head = copy.deepcopy(base.fc).requires_grad_(True)
    else:
        teacher_head = student_head = random_head(seed, features=base.channels)
    teacher = PULTeacher(base.trunk, teacher_head).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "projector"))
        projector = Projector(classes, width, features=base.channels)
    trunk = copy.deepcopy(base.trunk).requires_grad_(True)
    student = PULStudent(trunk, student_head, projector).eval()
    return student, teacher


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (scalar, not scaled by T^2);
    exactly 0 when the logits are equal."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True, reduction="batchmean",
    )


def function_speed(after: torch.Tensor, before: torch.Tensor) -> float:
    """The paper's function speed ``KL(softmax f_{t+1} || softmax f_t)``, mean over the probe batch."""
    return float(F.kl_div(
        F.log_softmax(before.double(), dim=1), F.log_softmax(after.double(), dim=1),
        log_target=True, reduction="batchmean",
    ))


def lr_factor(step: int, total_steps: int, decay: bool, warmup_steps: int = 0) -> float:
    """SHOT's schedule ``(1 + 10 * step / total)^-0.75`` (1 when ``decay`` is off), times the
    linear warm-up ``min(1, (step + 1) / warmup_steps)`` (none when ``warmup_steps`` is 0)."""
    factor = (1 + 10 * step / max(1, total_steps)) ** -0.75 if decay else 1.0
    return factor * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else factor


def make_optimizer(student: PULStudent, config: PULConfig) -> torch.optim.SGD:
    """SGD with two groups: trunk + fc at ``lr * trunk_lr_scale``, projector at ``lr``."""
    pretrained = [p for name, p in student.named_parameters() if p.requires_grad and not name.startswith("projector.")]
    groups = [
        {"params": pretrained, "lr": config.lr * config.trunk_lr_scale, "base_lr": config.lr * config.trunk_lr_scale},
        {"params": list(student.projector.parameters()), "lr": config.lr, "base_lr": config.lr},
    ]
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
    )


def checkpoint_state(student: PULStudent, base: Backbone) -> dict[str, torch.Tensor]:
    """The student's weights as the checkpoint stores them, contiguous CPU tensors.

    ResNet50 bases: torchvision key names (``conv1.*`` ... ``layer4.*``, plus ``fc.*`` when the
    base has its classifier). Other bases: the :class:`~discovery.backbone.Backbone`'s own key
    names (``trunk.*``, plus ``fc.*`` for the head), which the rebuilt base loads back.
    """
    with_fc = base.fc is not None
    state = {}
    for key, value in student.trunk.state_dict().items():
        if base.is_resnet50:
            index, rest = key.split(".", 1)
            key = f"{RESNET50.parts[int(index)]}.{rest}"
        else:
            key = f"trunk.{key}"
        state[key] = value.detach().cpu().contiguous()
    if with_fc:
        for key, value in student.head.state_dict().items():
            state[f"fc.{key}"] = value.detach().cpu().contiguous()
    return state


def projector_state(student: PULStudent) -> dict[str, torch.Tensor]:
    """The projector's weights under :data:`~discovery.backbones.PROJECTOR_PREFIX` (``pul_projector.0.weight`` ...)."""
    return {f"{PROJECTOR_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in student.projector.state_dict().items()}


def projector_from_state(state: dict[str, torch.Tensor]) -> Projector | None:
    """The projector a per-epoch checkpoint carries (frozen, eval mode), or ``None`` if it has none."""
    own = {k[len(PROJECTOR_PREFIX):]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    if not own:
        return None
    try:
        width, features = own["0.weight"].shape
        projector = Projector(int(own["2.weight"].shape[0]), int(width), int(features))
        projector.load_state_dict(own)
    except (KeyError, RuntimeError, ValueError) as err:
        raise PULError(f"malformed projector weights ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return projector.eval().requires_grad_(False)


def student_backbone(student: PULStudent, base: Backbone, step: int, stride: int, device: torch.device) -> Backbone:
    """A frozen copy of the student's current trunk (+ ``fc`` when the base has one) as a
    :class:`Backbone` at ``stride`` on ``device``, named ``BASE+pul@stepN``; a ``random`` base's
    copy still counts as random (a pipeline check). Other trunks than ResNet50 keep the stride
    they were given (only a ResNet50 is re-dilated)."""
    info = BackboneInfo(
        f"{base.info.name}+pul@step{step}", f"{base.info.sha256}+pul@step{step}", base.fc is not None,
        metadata={"kind": "pul-in-training", "step": step},
    )
    if base.is_resnet50:
        return backbone_from_state(checkpoint_state(student, base), info, stride, base.mean, base.std, device)
    trunk, head = copy.deepcopy(student.trunk), copy.deepcopy(student.head) if base.fc is not None else None
    twin = Backbone(trunk, head, mean=base.mean, std=base.std, stride=base.stride, info=info,
                    architecture=base.architecture, channels=base.channels, standardize=base.standardize)
    return twin.to(device).eval().requires_grad_(False)
