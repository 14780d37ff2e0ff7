"""``python -m adam_jax.cli``."""

import sys

from adam_jax.cli import main

sys.exit(main())
