"""``python -m app``: start the Gradio app (see :mod:`app.main`)."""

import sys

from .main import main

sys.exit(main())
