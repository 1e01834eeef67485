"""torch_curriculum: curricula from layer-wise cloud/edge meta-token differences, as drop-in PyTorch parts.

The math (``layer_distances``, ``normalize_layers``, ``aggregate``, ``percentiles``,
``assign_stages``), label files and the config are imported eagerly (they only need torch); the
parts that pull in transformers (extraction, dataset, the Trainer integration) and the samplers are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import ConfigError, CurriculumConfig
from .difficulty import (
    aggregate,
    assign_stages,
    layer_distances,
    normalize_layers,
    percentiles,
    score_all,
)
from .labels import LabelFileError, read_labels, write_labels

# public name -> module that defines it (imported lazily, on first attribute access)
_LAZY = {
    "MetaTokenExtractor": "torch_curriculum.extraction",
    "MetaTokenDifficultyDataset": "torch_curriculum.dataset",
    "build_sampler": "torch_curriculum.samplers",
    "RandomOrderSampler": "torch_curriculum.samplers",
    "EasyToHardSampler": "torch_curriculum.samplers",
    "LayerWiseProgressiveSampler": "torch_curriculum.samplers",
    "DynamicPacingSampler": "torch_curriculum.samplers",
    "LayerSpecificSampler": "torch_curriculum.samplers",
    "HybridSampler": "torch_curriculum.samplers",
    "PacingCallback": "torch_curriculum.integrations.hf",
    "CurriculumTrainer": "torch_curriculum.integrations.hf",
    "attach_curriculum": "torch_curriculum.integrations.hf",
    "LayerMaskCallback": "torch_curriculum.integrations.hf",
    "LossFeeder": "torch_curriculum.pacing",
    "DifficultyFileError": "torch_curriculum.dataset",
    "LayerMaskScheduler": "torch_curriculum.layer_mask",
}

__all__ = [
    "ConfigError",
    "CurriculumConfig",
    "LabelFileError",
    "__version__",
    "aggregate",
    "assign_stages",
    "layer_distances",
    "normalize_layers",
    "percentiles",
    "read_labels",
    "score_all",
    "write_labels",
    # lazily imported (see _LAZY)
    "DynamicPacingSampler",
    "EasyToHardSampler",
    "HybridSampler",
    "LayerMaskScheduler",
    "LayerSpecificSampler",
    "LayerWiseProgressiveSampler",
    "MetaTokenDifficultyDataset",
    "MetaTokenExtractor",
    "PacingCallback",
    "RandomOrderSampler",
    "build_sampler",
    "CurriculumTrainer",
    "attach_curriculum",
    "DifficultyFileError",
    "LayerMaskCallback",
    "LossFeeder",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torch_curriculum' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    from .dataset import DifficultyFileError, MetaTokenDifficultyDataset
    from .extraction import MetaTokenExtractor
    from .integrations.hf import (
        CurriculumTrainer,
        LayerMaskCallback,
        PacingCallback,
        attach_curriculum,
    )
    from .layer_mask import LayerMaskScheduler
    from .pacing import LossFeeder
    from .samplers import (
        DynamicPacingSampler,
        EasyToHardSampler,
        HybridSampler,
        LayerSpecificSampler,
        LayerWiseProgressiveSampler,
        RandomOrderSampler,
        build_sampler,
    )
