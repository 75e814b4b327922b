"""``python -m ftstudy COMMAND …``: the ``ftstudy`` command without its console script."""
import sys

from ftstudy.cli import main

sys.exit(main())
