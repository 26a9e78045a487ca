"""`python3 -m faultharness` (from tools/) runs the harness like tools/fault-harness."""

import sys

from .main import main

sys.exit(main())
