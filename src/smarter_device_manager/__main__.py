"""``python -m smarter_device_manager`` runs the same CLI as the console script."""

import sys

from smarter_device_manager.cli import main

sys.exit(main())
