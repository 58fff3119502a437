"""``python -m app`` in a checkout: start the Gradio app, under its one module name ``discovery.app``
(see :mod:`discovery.app.main`)."""

import sys

from discovery.app.main import main

sys.exit(main())
