"""``python -m torch_curriculum`` = the ``torch-curriculum`` command."""

import sys

from .cli import main

sys.exit(main())
