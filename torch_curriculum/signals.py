"""Deprecated location: the cheap per-sample signals moved to :mod:`torch_curriculum.experiments.signals`.

Kept as a thin re-export so ``from torch_curriculum.signals import ifd_scores`` keeps working.
"""

from .experiments.signals import *  # noqa: F403
from .experiments.signals import __all__  # noqa: F401
