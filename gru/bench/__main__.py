"""``python -m gru.bench``: the same as ``gru bench``."""

import sys

from gru.bench._cli import main

sys.exit(main())
