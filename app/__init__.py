"""Gradio app: upload an image, see LOST's box, seed, degree map and mask and a Grad-CAM map.

``python -m app`` starts it (see :mod:`app.main`); :func:`app.ui.build_demo` builds the Blocks UI
over :class:`app.engine.Engine`, which holds no Gradio code and can be driven directly.
"""

import os

# Gradio reads this when it is imported; the app never phones home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
