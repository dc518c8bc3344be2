"""``python -m streamgw``."""

import sys

from streamgw.cli import main

sys.exit(main())
