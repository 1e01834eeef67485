"""Wiring for "train the reference generator under strategy X": shared by the quickstart and the benchmarks.

Every strategy of a comparison gets the same generator initialisation (seeded), the same data,
budget and evaluation schedule; only the sampler (and, for layer-aware strategies, the layer mask)
differs. The functions here are thin: they connect :mod:`torch_curriculum.samplers`,
:mod:`torch_curriculum.layer_mask`, :mod:`torch_curriculum.pacing` and :func:`train_generator`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._cloud import CloudStateCache
from ._config import DEFAULT_CLOUD_SYSTEM_PROMPT, LoRAGenConfig
from ._data import LoRAGenCollator, LoRAGenDataset, build_examples
from ._generator import LoRAGenerator
from ._train import TrainResult, train_generator

__all__ = ["LAYER_AWARE_STRATEGIES", "LAYER_MODES", "FreezeOnlySampler", "GeneratorData", "prepare_generator_data",
           "run_strategy"]

logger = logging.getLogger(__name__)

# Strategies whose sampler says which generator layers should train (``trainable_layers``).
LAYER_AWARE_STRATEGIES = ("layer_wise_progressive", "layer_specific", "hybrid")

#: how a run combines a strategy's data order with its layer freezing (controls that separate the two)
LAYER_MODES = ("both", "freeze_only", "order_only")


class FreezeOnlySampler:
    """Random data order, with the layer schedule (``trainable_layers``) of another sampler.

    The freeze-only control of a layer-aware strategy: batches come from ``order`` (a random-order
    sampler), while ``schedule`` (e.g. a ``LayerWiseProgressiveSampler``) receives every
    ``update(loss)`` and ``set_epoch`` so its stages advance exactly as in the real strategy, and
    only its ``trainable_layers`` are used. Its own data stream is never drawn.

    Args:
        order: the sampler whose indices are yielded (``__iter__``, ``__len__``).
        schedule: the sampler whose ``trainable_layers`` / ``stage`` / ``num_layers`` are exposed.

    Example:
        >>> import torch
        >>> from torch_curriculum import CurriculumConfig
        >>> from torch_curriculum.samplers import build_sampler
        >>> lwp = CurriculumConfig.from_dict({"curriculum": {"strategy": "layer_wise_progressive"}})
        >>> rnd = CurriculumConfig.from_dict({"curriculum": {"strategy": "random"}})
        >>> d = torch.rand(12, 4)
        >>> s = FreezeOnlySampler(build_sampler(rnd, d), build_sampler(lwp, d))
        >>> sorted(iter(s)) == list(range(12)), s.trainable_layers == s.schedule.trainable_layers
        (True, True)
    """

    def __init__(self, order: Any, schedule: Any):
        self.order, self.schedule = order, schedule

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to both samplers."""
        for s in (self.order, self.schedule):
            if callable(getattr(s, "set_epoch", None)):
                s.set_epoch(epoch)

    def update(self, loss: float) -> None:
        """Forward the loss to both samplers (the schedule's stages advance with it)."""
        for s in (self.order, self.schedule):
            if callable(getattr(s, "update", None)):
                s.update(loss)

    @property
    def trainable_layers(self) -> list[int] | None:
        """The schedule's trainable generator layers."""
        return self.schedule.trainable_layers

    @property
    def state(self) -> dict[str, Any]:
        """The order sampler's state with the schedule's ``trainable_layers`` and ``stage``."""
        st = dict(getattr(self.order, "state", {}) or {})
        st.update(trainable_layers=self.schedule.trainable_layers, stage=getattr(self.schedule, "stage", None))
        return st

    def __getattr__(self, name: str) -> Any:
        if name in ("order", "schedule"):
            raise AttributeError(name)
        return getattr(self.schedule, name)


@dataclass
class GeneratorData:
    """Tokenized train/val/test sets for the generator plus the collator that adds cloud states.

    Attributes:
        train (LoRAGenDataset): index i is training sample i (the difficulty file's order).
        val (LoRAGenDataset): the fixed held-out validation split.
        test (LoRAGenDataset | None): the split used for nothing but the final test loss.
        collate (LoRAGenCollator): pads a batch and looks up its cached cloud states.
        cloud_hidden_size (int): width of the cached cloud states.
    """

    train: LoRAGenDataset
    val: LoRAGenDataset
    test: LoRAGenDataset | None
    collate: LoRAGenCollator
    cloud_hidden_size: int


def prepare_generator_data(train: Sequence[Any], val: Sequence[Any], test: Sequence[Any] | None, *,
                           edge_tokenizer: Any, cloud_model: nn.Module, cloud_tokenizer: Any,
                           max_length: int = 192, max_context_turns: int = 4, cloud_max_length: int = 512,
                           cloud_cache_path: str | Path | None = None, progress: bool = True) -> GeneratorData:
    """Tokenize the splits and encode every distinct cloud text once (cached to disk if asked).

    Args:
        train (Sequence[DialogueSample]): the training split (index i is training sample i).
        val (Sequence[DialogueSample]): the validation split.
        test (Sequence[DialogueSample] | None): the test split, or None for none.
        edge_tokenizer: tokenizer of the edge model.
        cloud_model (nn.Module): the frozen cloud LM (only its decoder runs, once per text).
        cloud_tokenizer: its tokenizer.
        max_length (int): edge token limit per example (longer prompts are cut from the left and
            counted in a warning). Defaults to 192.
        max_context_turns (int): context turns kept in the edge prompt and the cloud text. Defaults to 4.
        cloud_max_length (int): cloud tokens per text; a longer text (very long turns) keeps its
            system prompt and is cut from the left, and the count is logged. Defaults to 512.
        cloud_cache_path (str | Path | None): safetensors file for the cloud states; loaded when
            present, written after encoding. Defaults to None (memory only).
        progress (bool): tqdm bar while encoding. Defaults to True.

    Returns:
        GeneratorData
    """
    def examples(samples):
        return build_examples(samples, edge_tokenizer, max_length=max_length, max_context_turns=max_context_turns)

    train_ex, val_ex = examples(train), examples(val)
    test_ex = examples(test) if test is not None else None
    # the system prompt opens every cloud text; an over-long text keeps it and loses its oldest turns
    keep = len(cloud_tokenizer(DEFAULT_CLOUD_SYSTEM_PROMPT + "\n", add_special_tokens=True)["input_ids"])
    cache = CloudStateCache(cloud_model, cloud_tokenizer, max_length=cloud_max_length, keep_prefix=keep)
    if cloud_cache_path is not None and Path(cloud_cache_path).exists():
        cache.load(cloud_cache_path)
    texts = [e.cloud_text for e in train_ex + val_ex + (test_ex or [])]
    added = cache.encode(texts, progress=progress)
    if cloud_cache_path is not None and added:
        cache.save(cloud_cache_path)
    pad = edge_tokenizer.pad_token_id if edge_tokenizer.pad_token_id is not None else edge_tokenizer.eos_token_id
    return GeneratorData(train=LoRAGenDataset(train_ex), val=LoRAGenDataset(val_ex),
                         test=LoRAGenDataset(test_ex) if test_ex is not None else None,
                         collate=LoRAGenCollator(cache, pad_token_id=pad),
                         cloud_hidden_size=int(cache.hidden_size))


def run_strategy(strategy: str, *, edge_model: nn.Module, data: GeneratorData, difficulty: Any,
                 config: Any, steps: int, batch_size: int = 8, lr: float = 2e-3, eval_every: int = 10,
                 seed: int = 0, generator_config: LoRAGenConfig | None = None,
                 log_path: str | Path | None = None, sampler_overrides: dict[str, Any] | None = None,
                 run_info: dict[str, Any] | None = None, progress: bool = False,
                 on_trained: Callable[[LoRAGenerator, TrainResult], None] | None = None,
                 layer_mode: str = "both", autocast_dtype: torch.dtype | None = None,
                 on_init: Callable[[LoRAGenerator], None] | None = None) -> TrainResult:
    """Train a freshly initialised generator under one curriculum strategy.

    The generator is initialised from ``seed`` (identically for every strategy), the sampler comes
    from ``build_sampler(config with curriculum.strategy=strategy, difficulty)`` seeded with
    ``seed``, a :class:`PacingCallback` feeds it the loss, and for layer-aware strategies a
    :class:`LayerMaskScheduler` freezes the generator layers the sampler does not train. The
    generator's hooks are removed from the (shared) edge model before returning.

    Args:
        strategy (str): a strategy name of :data:`torch_curriculum.config.STRATEGIES` (or alias).
        edge_model (nn.Module): the frozen edge LM (shared between runs).
        data (GeneratorData): from :func:`prepare_generator_data`.
        difficulty: a ``MetaTokenDifficultyDataset`` or ``[N, L]`` tensor aligned with ``data.train``.
        config (CurriculumConfig): the curriculum settings (its strategy is replaced).
        steps (int): optimizer steps (the same budget for every strategy).
        batch_size (int): Defaults to 8.
        lr (float): AdamW learning rate. Defaults to 2e-3.
        eval_every (int): validation period in steps. Defaults to 10.
        seed (int): generator init, sampler permutation and dropout seed. Defaults to 0.
        generator_config (LoRAGenConfig | None): generator hyper-parameters. Defaults to LoRA-Gen's.
        log_path (str | Path | None): JSONL log of the run.
        sampler_overrides (dict | None): extra sampler keyword arguments.
        run_info (dict | None): extra fields for the log's first record.
        progress (bool): tqdm bar over steps. Defaults to False.
        on_trained (Callable | None): ``f(generator, result)`` called after training, while the
            trained generator is still attached to the edge model (e.g. to score every training
            sample with it). Defaults to None.
        layer_mode (str): for a layer-aware strategy, ``"both"`` (its order and its layer
            freezing, the strategy itself), ``"freeze_only"`` (its layer schedule, random data order:
            :class:`FreezeOnlySampler`) or ``"order_only"`` (its data order, every layer trainable).
            Defaults to ``"both"``.
        autocast_dtype (torch.dtype | None): run the training forward/backward under
            ``torch.autocast`` with this dtype (``torch.bfloat16``); None trains in the model's
            dtype. Defaults to None.
        on_init (Callable | None): ``f(generator)`` called on the freshly initialised generator
            before training (e.g. per-layer gradient norms at initialisation). Defaults to None.

    Returns:
        TrainResult

    Raises:
        ValueError: unknown strategy or layer_mode, a control layer_mode for a strategy without
            layer freezing, or a difficulty table whose length differs from ``data.train``.
    """
    from ..config import CurriculumConfig, canonical_strategy
    from ..layer_mask import LayerMaskScheduler
    from ..pacing import LossFeeder
    from ..samplers import build_sampler

    strategy = canonical_strategy(strategy)
    n_diff = len(difficulty) if not isinstance(difficulty, torch.Tensor) else difficulty.shape[0]
    if n_diff != len(data.train):
        raise ValueError(f"difficulty has {n_diff} samples but the training set has {len(data.train)}")
    cfg_dict = config.to_dict()
    cfg_dict["curriculum"]["strategy"] = strategy
    cfg_dict["training"]["seed"] = seed
    cfg = CurriculumConfig.from_dict(cfg_dict)
    if layer_mode not in LAYER_MODES:
        raise ValueError(f"layer_mode must be one of {', '.join(LAYER_MODES)}, got {layer_mode!r}")
    if layer_mode != "both" and strategy not in LAYER_AWARE_STRATEGIES:
        raise ValueError(f"layer_mode={layer_mode!r} separates order from layer freezing; strategy {strategy!r} "
                         f"freezes no layers (layer-aware: {', '.join(LAYER_AWARE_STRATEGIES)})")
    sampler = build_sampler(cfg, difficulty, **(sampler_overrides or {}))
    if layer_mode == "freeze_only":
        rnd = cfg.to_dict()
        rnd["curriculum"]["strategy"] = "random"
        sampler = FreezeOnlySampler(build_sampler(CurriculumConfig.from_dict(rnd), difficulty), sampler)

    torch.manual_seed(seed)
    generator = LoRAGenerator(edge_model, data.cloud_hidden_size, generator_config)
    try:
        if on_init is not None:
            on_init(generator)
        pacing = LossFeeder(sampler)  # a plain loop: the feeder without the TrainerCallback face
        freezes = strategy in LAYER_AWARE_STRATEGIES and layer_mode != "order_only"
        sched = LayerMaskScheduler(generator, sampler) if freezes else None
        info = {"strategy": strategy, "layer_mode": layer_mode, "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                "curriculum": cfg.to_dict(), "generator": dataclasses.asdict(generator.config),
                **(run_info or {})}
        result = train_generator(generator, data.train, sampler=sampler, collate_fn=data.collate,
                                 val_dataset=data.val, test_dataset=data.test, steps=steps,
                                 batch_size=batch_size, lr=lr, eval_every=eval_every, pacing_callback=pacing,
                                 layer_mask_scheduler=sched, log_path=log_path, seed=seed, progress=progress,
                                 run_info=info, autocast_dtype=autocast_dtype)
        if on_trained is not None:
            on_trained(generator, result)
        return result
    finally:
        generator.remove_hooks()
