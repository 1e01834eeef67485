"""Deprecated location: the statistics moved to :mod:`torch_curriculum.experiments.metrics`.

Kept as a thin re-export so ``from torch_curriculum.metrics import paired_test`` keeps working.
"""

from .experiments.metrics import *  # noqa: F403
from .experiments.metrics import __all__  # noqa: F401
