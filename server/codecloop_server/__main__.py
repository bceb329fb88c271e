"""``python -m codecloop_server`` = ``codecloop serve``."""

import sys

from codecloop_server.cli import main

sys.exit(main())
