"""``python -m eval`` in a checkout: the harness's command line, under its one module name
``discovery.eval`` (the same modules the installed ``discovery eval`` runs)."""

import sys

from discovery.eval.cli import main

sys.exit(main())
