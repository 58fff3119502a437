"""PUL (Panning through Unstructured Labels): refine a pretrained backbone (ResNet50, or any CNN) on random labels.

The seed paper's recipe (docs/pul.md): every unlabeled training image gets a fixed random label in
``[0, C)``; a projector of two linear layers on the pooled layer4 features is trained with
cross-entropy on those labels, regularised by ``kl_weight * T^2 * KL(p_frozen || p_student)`` at
temperature ``T`` between the frozen base's and the student's prediction distributions. The
result is a checkpoint (trunk, plus ``fc`` when the base had one; torchvision key names for the
ResNet50s) that ``load_backbone("pul:FILE")`` and ``Localizer(backbone="pul:FILE")`` read (a
``timm:`` / ``module:`` base is rebuilt from the name in the metadata).

Choices the paper leaves open are constants of :class:`PULConfig` and are written into every
checkpoint's metadata; docs/pul.md explains each. The main ones:

- BatchNorm in eval mode everywhere (running statistics frozen, affine weights trained): teacher
  and student compute the same function at step 0, so the KL term is exactly 0 there, batch size
  does not change the function, and DDP needs no SyncBatchNorm.
- Training at output stride 32 (the standard ResNet50 the weights were trained as); LOST later runs
  the same weights dilated at stride 16.
- Headless bases (``dino``, a trunk with no head): the prediction distribution is a frozen random
  linear head ``C -> 1000`` (C = the base's channels; seeded) shared by teacher and student.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) training uses DDP (gloo on CPU, nccl on CUDA);
labels, data order and augmentation are pure functions of the seed, every rank computes them
identically, and only rank 0 writes files.

Modules: :mod:`.config` (options), :mod:`.data` (image lists, labels, the dataset), :mod:`.model`
(networks and losses), :mod:`.checkpoint` (files), :mod:`.dynamics` (CSV and plot), :mod:`.train`
(PUL's part of the training loop shared with LOST+CAD, :mod:`discovery.training`), :mod:`.evidence`
with :mod:`.measures` and :mod:`.figures` (``pul evidence``).
"""

from ..splits import DATASETS
from ..trainstate import state_path
from .config import PULConfig, PULResult
from .data import PULError
from .dynamics import plot_dynamics, read_dynamics
from .model import build_models, distill_kl, function_speed
from .train import train

__all__ = [
    "DATASETS",
    "PULConfig",
    "PULError",
    "PULResult",
    "build_models",
    "distill_kl",
    "function_speed",
    "plot_dynamics",
    "read_dynamics",
    "state_path",
    "train",
]
