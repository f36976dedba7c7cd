"""``python -m secureserve.cli``."""

import sys

from secureserve.cli import main

sys.exit(main())
