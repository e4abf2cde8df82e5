"""`python -m clare_dist` is the same as the `clare-dist` command."""

import sys

from clare_dist.cli import main

sys.exit(main())
