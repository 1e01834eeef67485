"""Compatibility module: the names that used to live here, re-exported from their new homes.

* :class:`PacingCallback`, :class:`CurriculumTrainer`, :func:`attach_curriculum`,
  :class:`LayerMaskCallback`: :mod:`torch_curriculum.integrations.hf` (imports transformers);
* :class:`LayerMaskScheduler`, :data:`DEFAULT_LAYER_PATTERN`, :data:`OUTSIDE_POLICIES`:
  :mod:`torch_curriculum.layer_mask`;
* :func:`reduce_loss_across_ranks` and the plain :class:`LossFeeder`: :mod:`torch_curriculum.pacing`.

``LayerMaskScheduler`` is no longer a ``TrainerCallback`` itself: give it to
``CurriculumTrainer(..., layer_mask=sched)`` or wrap it, ``callbacks=[LayerMaskCallback(sched)]``.
"""

from __future__ import annotations

from .integrations.hf import (
    CurriculumTrainer,
    LayerMaskCallback,
    PacingCallback,
    attach_curriculum,
)
from .layer_mask import DEFAULT_LAYER_PATTERN, OUTSIDE_POLICIES, LayerMaskScheduler
from .pacing import LossFeeder, reduce_loss_across_ranks

__all__ = [
    "DEFAULT_LAYER_PATTERN",
    "OUTSIDE_POLICIES",
    "CurriculumTrainer",
    "LayerMaskCallback",
    "LayerMaskScheduler",
    "LossFeeder",
    "PacingCallback",
    "attach_curriculum",
    "reduce_loss_across_ranks",
]
