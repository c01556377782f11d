"""``python -m privfed``: the ``privfed`` command."""
import sys

from privfed.cli import main

sys.exit(main())
