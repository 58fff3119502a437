"""The library's defaults that the command line shows, kept apart from the modules that use them
so that building a parser (``discovery --help``, an argument error) imports no torch.

Each is re-exported by its user under the same name (``discovery.localizer.DEFAULT_MAX_SIDE``...).
"""

#: Output strides every command accepts (a ResNet50: no dilation, layer4 dilated, layer3+4 dilated).
STRIDES = (8, 16, 32)
#: What a ViT's feature map holds: the last block's keys (the default), queries, values, output tokens.
VIT_FEATURES = ("k", "q", "v", "tokens")
#: Images whose longer side exceeds this are shrunk before the forward pass (``Localizer``).
DEFAULT_MAX_SIDE = 1024
#: LOST's number of expansion candidates.
DEFAULT_K = 100
#: Discovery methods of :meth:`discovery.localizer.Localizer.localize` (``locate --method``).
DISCOVERY_METHODS = ("lost", "tokencut")
#: TokenCut's graph threshold: cosine similarity above which two cells are joined (main_tokencut.py).
DEFAULT_TAU = 0.2
#: Saliency methods of the explainer.
CAM_METHODS = ("gradcam", "eigencam")
DEFAULT_THRESHOLD = 0.2
"""CAM → box threshold as a fraction of the map's maximum: Zhou et al. (CAM, 2016) segment at 20 %
of the max and box the largest connected component; Grad-CAM (Selvaraju et al.) uses 15 %. Higher
values (0.5) give tighter boxes around the peak only, which under-covers whole objects."""
