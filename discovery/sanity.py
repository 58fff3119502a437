"""Adebayo et al.'s sanity check for saliency maps: randomise the layers top-down and watch the map change.

A map that survives the randomisation of the weights explains the input, not the network.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .architecture import RESNET50, Stage
from .backbone import Backbone
from .explain import CamResult, Explainer, Target
from .images import ImageInput, PreparedImage


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _stage_name(stage: Stage) -> str:
    """A stage of several weighted parts (the stem) is named by them: ``conv1+bn1``."""
    return stage.name if len(stage.parts) == 1 else "+".join(stage.weighted_parts)


SANITY_LAYERS = ("fc", *(_stage_name(stage) for stage in reversed(RESNET50.stages)))
"""Cascading randomisation order of :func:`sanity_check` on the ResNet50s, top (output) to bottom (input)."""


def layer_groups(backbone: Backbone) -> list[tuple[str, list[nn.Module]]]:
    """The cascade's steps, top-down: ``(name, modules re-initialised at that step)``.

    The head first (``fc``; none when headless). Then, for a declared architecture (the ResNet50s:
    :data:`SANITY_LAYERS`), its stages;
    for other trunks, the trunk's top-level children that hold parameters, last first, named by
    their path in the trunk (a wrapper with a single such child is looked through, e.g. a timm
    model's ``net``). The granularity is the trunk's: a trunk that is one big child gives few steps.
    """
    groups: list[tuple[str, list[nn.Module]]] = [("fc", [backbone.fc])] if backbone.fc is not None else []
    if backbone.structure is not None:
        structure = backbone.structure
        return groups + [
            (_stage_name(stage), [backbone.trunk[structure.index(p)] for p in stage.weighted_parts])
            for stage in reversed(structure.stages)
        ]
    prefix, module = "", backbone.trunk
    while True:
        children = [(n, m) for n, m in module.named_children() if _has_parameters(m)]
        if len(children) != 1:
            break
        prefix, module = f"{prefix}{children[0][0]}.", children[0][1]
    return groups + [(f"{prefix}{n}", [m]) for n, m in reversed(children)]


@dataclass(frozen=True)
class SanityStep:
    """One step of the cascade: ``layer`` (and every layer above it) re-initialised.

    ``spearman`` and ``ssim`` compare the step's map with the original (NaN when a map is
    constant, where rank correlation is undefined); ``cam`` is the step's ``(H, W)`` map.
    """

    layer: str
    spearman: float
    ssim: float
    cam: np.ndarray

    def to_json(self) -> dict:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 4)

        return {"layer": self.layer, "spearman": num(self.spearman), "ssim": num(self.ssim)}


@dataclass(frozen=True)
class SanityReport:
    """Adebayo et al.'s cascading randomisation for one image: the original map and each step."""

    original: CamResult
    steps: tuple[SanityStep, ...]

    def table(self) -> str:
        """Plain-text table: step, layer, Spearman rank correlation, SSIM."""
        lines = [f"{'step':>4}  {'randomised (cascading)':<24}{'spearman':>9}{'ssim':>9}"]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{i:>4}  {'+ ' + s.layer if i > 1 else s.layer:<24}{s.spearman:>9.4f}{s.ssim:>9.4f}")
        return "\n".join(lines)


def compare_maps(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(spearman, ssim)`` of two same-shaped [0, 1] maps (NaN where undefined)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    side = min(a.shape)
    if side < 3:
        return rho, float("nan")
    win = min(7, side if side % 2 else side - 1)
    return rho, float(structural_similarity(a, b, data_range=1.0, win_size=win))


def _reinit(module: nn.Module) -> None:
    """Default-initialise every conv, linear and batch-norm layer inside ``module`` (stats included)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def sanity_check(
    explainer: Explainer,
    image: ImageInput | PreparedImage,
    method: str = "gradcam",
    target: Target = None,
    seed: int = 0,
) -> SanityReport:
    """Cascading model-parameter randomisation (Adebayo et al., 2018) on one image.

    Re-initialises (PyTorch's default init, seeded) the layers top-down, cumulatively:
    ``fc``, ``layer4``, ``layer3``, ``layer2``, ``layer1``, ``conv1+bn1`` on the ResNet50s, the
    trunk's top-level children on other backbones (:func:`layer_groups`; batch-norm running
    statistics are reset too; ``fc`` is skipped for headless backbones), and compares each step's
    map with the original. The class target stays the original's (its top-1 when ``target`` is
    ``None``), so changes come from the weights alone. Works on a deep copy: the explainer's
    backbone is never modified.
    """
    prepared = image if isinstance(image, PreparedImage) else explainer.localizer.prepare(image)
    original = explainer(prepared, method=method, target=target)
    net = copy.deepcopy(explainer.backbone)
    fixed = original.target if method == "gradcam" else None
    steps = []
    device = explainer.backbone.device
    # on a GPU the re-initialisation draws from that device's generator: fork it too, so the
    # caller's CUDA random state is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for layer, modules in layer_groups(net):
            for module in modules:
                _reinit(module)
            net.requires_grad_(False)
            shadow = Explainer(explainer.localizer.with_backbone(net), explainer.threshold)
            res = shadow(prepared, method=method, target=fixed)
            rho, ssim = compare_maps(original.cam, res.cam)
            steps.append(SanityStep(layer, rho, ssim, res.cam))
    return SanityReport(original, tuple(steps))


def plot_sanity(report: SanityReport, rgb: np.ndarray, path) -> None:
    """Save a figure: the original map and each step's map over ``rgb``, and the two metrics per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import viz

    panels = [("original", report.original.cam)] + [(s.layer, s.cam) for s in report.steps]
    fig = plt.figure(figsize=(2.4 * len(panels), 5.2))
    grid = fig.add_gridspec(2, len(panels), height_ratios=(1, 1))
    for i, (title, cam) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(viz.heatmap(rgb, cam))
        ax.set_title(title if i == 0 else f"+{title}" if i > 1 else title, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    x = np.arange(1, len(report.steps) + 1)
    ax.plot(x, [s.spearman for s in report.steps], "o-", label="Spearman rank correlation")
    ax.plot(x, [s.ssim for s in report.steps], "s-", label="SSIM")
    ax.set_xticks(x, [s.layer for s in report.steps])
    ax.set_xlabel("layers randomised, cascading from the top")
    ax.set_ylabel("similarity to the original map")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{report.original.method} sanity check (Adebayo et al., 2018)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
