"""``python -m kudos ARGS`` runs the ``kudos`` command (what tests and benches spawn)."""

import sys

from kudos.commands.main import main

sys.exit(main())
