"""Reference LoRA-Gen generator (Xiao et al., ICML 2025), the part the curricula train.

The cloud model reads system prompt + persona once (states cached by :class:`CloudStateCache`);
L learnable queries cross-attend over those states and give one meta token per edge layer; a
per-layer router ``BN(f2(SiLU(f1(t_i))))`` with KeepTop-K softmax mixes n LoRA experts into a
per-sample LoRA on the frozen edge model's FFN projections. :func:`train_generator` trains it
with any sampler, ``PacingCallback`` and ``LayerMaskScheduler``; :func:`prepare_generator_data`
and :func:`run_strategy` wire one curriculum comparison (what ``torch-curriculum experiment`` and
``examples/quickstart.py`` run).

Example:
    >>> from torch_curriculum.loragen import LoRAGenConfig
    >>> LoRAGenConfig().n_experts, LoRAGenConfig().top_k, LoRAGenConfig().rank
    (8, 2, 16)
"""

from ._cloud import CloudStateCache, encode_cloud, pad_states
from ._config import DEFAULT_CLOUD_SYSTEM_PROMPT, LoRAGenConfig, LoRAGenConfigError
from ._data import (
    CLOUD_SOURCES,
    LoRAGenCollator,
    LoRAGenDataset,
    LoRAGenExample,
    build_examples,
    cloud_text,
)
from ._experiment import (
    LAYER_AWARE_STRATEGIES,
    LAYER_MODES,
    FreezeOnlySampler,
    GeneratorData,
    prepare_generator_data,
    run_strategy,
)
from ._generator import (
    LoRAGenerator,
    LoRAGenOutput,
    Routing,
    edge_decoder_layers,
    keep_topk_softmax,
)
from ._train import TrainResult, evaluate_loss, evaluate_per_sample_loss, train_generator

# The regex LayerMaskScheduler needs to find a generator layer's index in a parameter name.
LAYER_PATTERN = r"^layers\.(\d+)\."

__all__ = [
    "CLOUD_SOURCES",
    "LAYER_AWARE_STRATEGIES",
    "LAYER_MODES",
    "DEFAULT_CLOUD_SYSTEM_PROMPT",
    "LAYER_PATTERN",
    "CloudStateCache",
    "FreezeOnlySampler",
    "GeneratorData",
    "LoRAGenCollator",
    "LoRAGenConfig",
    "LoRAGenConfigError",
    "LoRAGenDataset",
    "LoRAGenExample",
    "LoRAGenOutput",
    "LoRAGenerator",
    "Routing",
    "TrainResult",
    "build_examples",
    "cloud_text",
    "edge_decoder_layers",
    "encode_cloud",
    "evaluate_loss",
    "evaluate_per_sample_loss",
    "keep_topk_softmax",
    "pad_states",
    "prepare_generator_data",
    "run_strategy",
    "train_generator",
]
