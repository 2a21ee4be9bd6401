"""``python -m dpslm_utils ...``: see :mod:`dpslm_utils.cli`."""

import sys

from .cli import main

sys.exit(main())
