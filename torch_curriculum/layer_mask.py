"""Layer freezing that follows a curriculum: which parameters train in which stage.

:class:`LayerMaskScheduler` sets ``requires_grad`` layer by layer from a curriculum sampler's
``trainable_layers`` (or any ``step -> layers`` function) and guarantees that frozen parameters do
not move in the optimizer step. It works in any training loop and imports neither transformers nor
accelerate; in ``transformers.Trainer`` pass it to :class:`torch_curriculum.CurriculumTrainer`
(``layer_mask=``) or wrap it in :class:`torch_curriculum.integrations.hf.LayerMaskCallback`.

Supported: a single process, DDP (``find_unused_parameters=True``) and FSDP2 (``fully_shard``; each
unshard copies the sharded parameter's ``requires_grad`` to the gathered one, tested with gloo on
CPU). Not supported, with an error at construction: FSDP1 (``FullyShardedDataParallel``, whose flat
parameters cannot change ``requires_grad`` per layer) and DeepSpeed engines or optimizers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_LAYER_PATTERN",
    "OUTSIDE_POLICIES",
    "UNFREEZE_POLICIES",
    "LayerMaskScheduler",
    "check_supported_model",
]

logger = logging.getLogger(__name__)

#: Matches the layer index in ``...layers.<N>.`` style parameter names: HF decoders
#: (``model.layers.N.``, ``gpt_neox.layers.N.``, ``decoder.layers.N.``), GPT-2 (``transformer.h.N.``),
#: BERT (``encoder.layer.N.``), T5 (``block.N.``), PEFT LoRA
#: (``base_model.model.model.layers.N.mlp.gate_proj.lora_A.default.weight``) and the reference
#: LoRA-Gen generator (``layers.N.router.f1.weight`` at its root, ``generator.layers.N.`` when it is
#: a submodule). The first (outermost) match in a name wins. With this default pattern, parameters
#: of two different layer stacks (``encoder.layers.N`` and ``decoder.layers.N``) are an error,
#: never one merged index: pass a ``layer_pattern`` that selects one stack.
DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\."

#: What happens to managed parameters that are in no layer (embeddings, final norm, meta-token
#: queries, shared heads): ``trainable`` always trainable; ``frozen`` frozen while only some layers
#: are trainable and trainable when all are; ``always_frozen`` never trainable.
OUTSIDE_POLICIES = ("trainable", "frozen", "always_frozen")

#: What happens to the optimizer state (Adam's moments and step count) of a layer that trained,
#: was frozen, and is unfrozen again (``layer_specific``'s walk over the layers, then phase 2):
#: ``reset`` drops it so the optimizer starts the layer afresh (Adam re-initialises moments and
#: bias correction); ``keep`` resumes with the moments from when the layer was last trained.
UNFREEZE_POLICIES = ("reset", "keep")

_OUTSIDE = "outside"


def _innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """Unwrap accelerate's AcceleratedOptimizer (and similar) to the torch optimizer that steps."""
    _reject_deepspeed(optimizer, "optimizer")
    seen = 0
    while not isinstance(optimizer, torch.optim.Optimizer) or (
            hasattr(optimizer, "optimizer") and isinstance(optimizer.optimizer, torch.optim.Optimizer)):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or seen > 8:
            break
        optimizer, seen = inner, seen + 1
        _reject_deepspeed(optimizer, "optimizer")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or wrap one in .optimizer), got "
                        f"{type(optimizer).__name__}")
    return optimizer


def _reject_deepspeed(obj: Any, what: str) -> None:
    module = type(obj).__module__ or ""
    if module == "deepspeed" or module.startswith("deepspeed."):
        raise NotImplementedError(
            f"LayerMaskScheduler does not support DeepSpeed (the {what} is a {type(obj).__name__} from "
            f"{module}): DeepSpeed's ZeRO optimizers copy the trainable parameters into their own fp32 "
            "partitions when the engine is built, so changing requires_grad afterwards neither "
            "freezes nor unfreezes anything. Use DDP, or freeze a fixed set of layers before "
            "deepspeed.initialize")


def check_supported_model(model: nn.Module) -> None:
    """Raise if ``model`` is wrapped in a way under which per-layer freezing cannot work.

    Args:
        model (nn.Module): the model (possibly wrapped by DDP / FSDP / DeepSpeed).

    Raises:
        NotImplementedError: an FSDP1 (``FullyShardedDataParallel``) or DeepSpeed model, naming
            the limitation. FSDP2 (``fully_shard``) models are supported.

    Example:
        >>> check_supported_model(torch.nn.Linear(2, 2))  # a plain module: fine
    """
    _reject_deepspeed(model, "model")
    fsdp1: tuple[type, ...] = ()
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        fsdp1 = (FullyShardedDataParallel,)
    except ImportError:  # pragma: no cover
        pass
    for module in model.modules():
        if fsdp1 and isinstance(module, fsdp1):
            raise NotImplementedError(
                "LayerMaskScheduler does not support FSDP (FullyShardedDataParallel) models: FSDP "
                "flattens a unit's parameters into one flat parameter, whose requires_grad cannot "
                "differ per layer after wrapping. Use DDP, or freeze a fixed set of layers before "
                "wrapping")
        _reject_deepspeed(module, "model")


class LayerMaskScheduler:
    """Freezes and unfreezes a model's layers following a curriculum (``requires_grad`` per layer).

    Which parameters: only those with ``requires_grad=True`` when the scheduler is built are managed
    (for a PEFT model: the LoRA weights; the frozen base model stays frozen). A parameter belongs to
    layer N when ``layer_pattern`` finds N in its name (first match); the default
    :data:`DEFAULT_LAYER_PATTERN` reads ``...layers.<N>.`` (also ``h.<N>.``, ``layer.<N>.``,
    ``block(s).<N>.``), which covers PEFT LoRA names, common decoders and the reference LoRA-Gen
    generator (``layers.<N>.`` / ``generator.layers.<N>.``). A model of your own should name its
    per-layer parameters ``...layers.<N>.`` or pass ``layer_pattern``. Managed parameters in no
    layer follow ``outside_policy`` (:data:`OUTSIDE_POLICIES`).

    With the default pattern, layer indices must come from one stack: an encoder-decoder whose
    ``encoder.layers.3`` and ``decoder.layers.3`` would both be "layer 3" is an error that asks for a
    ``layer_pattern`` (e.g. ``r"decoder\\.layers\\.(\\d+)\\."``). A custom pattern is used as given.

    Where the layers come from: ``source.trainable_layers`` (sampler contract: a list of layer
    indices, or None for all layers), or ``source(step)`` for any callable ``step -> list[int] |
    None``; ``step`` is the Trainer's ``global_step`` or, by hand, the number of :meth:`step` calls.
    When ``source`` is a sampler, its layer count (``num_layers``) must equal the model's: layers
    ``0 .. num_layers-1`` must be exactly the model's managed layers (a difficulty table with fewer
    layers than the model would leave the extra layers frozen for the whole curriculum). To drive a
    model whose layers differ from the table, pass a callable ``source`` that maps explicitly.

    Frozen parameters do not move: freezing sets ``p.grad = None`` and a step pre-hook on the
    optimizer sets ``p.grad = None`` again for every frozen managed parameter right before each
    step. torch's Adam/AdamW/SGD skip parameters whose grad is None, so neither weight decay nor
    stale Adam moments touch them (a zero grad tensor, e.g. after ``zero_grad(set_to_none=False)``,
    would let AdamW move them). Build the optimizer over all managed parameters *before* the first
    freeze (the Trainer does; it only takes parameters that require grad).

    A layer that trained, was frozen and is unfrozen again follows ``unfreeze`` (:data:`UNFREEZE_POLICIES`):
    ``"reset"`` (default) drops its optimizer state in every guarded optimizer, so Adam restarts its
    moments and bias correction for it; ``"keep"`` resumes with the moments it had when it was frozen.

    Under DDP parameters that stop requiring grad need ``find_unused_parameters=True``. Under FSDP2
    (``fully_shard``, torch >= 2.6) the managed parameters are the sharded DTensors: freezing and the
    optimizer guard work on them as on plain tensors (build the scheduler after ``fully_shard``).
    FSDP1 and DeepSpeed are rejected at construction (:func:`check_supported_model`): both fix which
    parameters train when they wrap the model.

    Args:
        model (nn.Module): the model (PEFT model, generator, any module).
        source: a sampler with ``trainable_layers``, or a callable ``step -> list[int] | None``.
        layer_pattern (str | re.Pattern | None): regex whose group 1 (or group ``layer``) is the
            layer index. Default :data:`DEFAULT_LAYER_PATTERN`.
        outside_policy (str): ``"trainable"`` (default), ``"frozen"`` or ``"always_frozen"``.
        optimizer (torch.optim.Optimizer | None): optimizer to guard with the pre-step hook.
        unfreeze (str): ``"reset"`` (default) or ``"keep"``: optimizer state of re-unfrozen layers.

    Raises:
        ValueError: no managed parameter matches the pattern (the message shows the pattern and
            sample names), two layer stacks under the default pattern, a sampler whose layer count
            differs from the model's, a bad pattern or policy, or nothing trainable.
        TypeError: ``source`` is neither a sampler nor a callable.
        NotImplementedError: an FSDP1 or DeepSpeed model or optimizer.

    Example:
        >>> sched = LayerMaskScheduler(peft_model, sampler, optimizer=opt)   # doctest: +SKIP
        >>> for batch in loader:                                            # doctest: +SKIP
        ...     sched.step(); loss = peft_model(**batch).loss; loss.backward(); opt.step()
    """

    def __init__(self, model: nn.Module, source: Any, *, layer_pattern: str | re.Pattern | None = None,
                 outside_policy: str = "trainable", optimizer: torch.optim.Optimizer | None = None,
                 unfreeze: str = "reset") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (hasattr(source, "trainable_layers") or callable(source)):
            raise TypeError("source must have a trainable_layers attribute (a curriculum sampler) or "
                            f"be a callable step -> list[int] | None, got {type(source).__name__}")
        if outside_policy not in OUTSIDE_POLICIES:
            raise ValueError(f"outside_policy must be one of {OUTSIDE_POLICIES}, got {outside_policy!r}")
        if unfreeze not in UNFREEZE_POLICIES:
            raise ValueError(f"unfreeze must be one of {UNFREEZE_POLICIES}, got {unfreeze!r}")
        check_supported_model(model)
        pattern = re.compile(layer_pattern if layer_pattern is not None else DEFAULT_LAYER_PATTERN)
        if "layer" not in pattern.groupindex and pattern.groups < 1:
            raise ValueError(f"layer_pattern {pattern.pattern!r} must capture the layer index in group "
                             "1 or in a group named 'layer', e.g. r'layers\\.(\\d+)\\.'")
        group: int | str = "layer" if "layer" in pattern.groupindex else 1
        self.model = model
        self.source = source
        self.pattern = pattern
        self.outside_policy = outside_policy
        self.unfreeze = unfreeze
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameter with requires_grad=True; LayerMaskScheduler "
                             "manages the parameters that are trainable when it is built")
        self.layer_params: dict[int, list[tuple[str, nn.Parameter]]] = {}
        self.outside_params: list[tuple[str, nn.Parameter]] = []
        stacks: dict[str, str] = {}  # stack prefix -> an example parameter name
        for name, p in named:
            m = pattern.search(name)
            if m is None:
                self.outside_params.append((name, p))
                continue
            try:
                idx = int(m.group(group))
            except (TypeError, ValueError) as e:
                raise ValueError(f"layer_pattern {pattern.pattern!r} matched {name!r} but its group "
                                 f"{group!r} is {m.group(group)!r}, not an integer layer index") from e
            stacks.setdefault(name[:m.start(group)].strip("."), name)
            self.layer_params.setdefault(idx, []).append((name, p))
        if not self.layer_params:
            sample = ", ".join(n for n, _ in named[:8])
            raise ValueError(f"layer_pattern {pattern.pattern!r} matches none of the model's "
                             f"{len(named)} trainable parameters (e.g. {sample}); pass a layer_pattern "
                             "whose group 1 is the layer index, e.g. r'(?:^|\\.)layers\\.(\\d+)\\.'")
        if layer_pattern is None and len(stacks) > 1:
            listed = "; ".join(f"{prefix!r} (e.g. {example})" for prefix, example in sorted(stacks.items()))
            raise ValueError(
                f"the model's trainable parameters lie in {len(stacks)} different layer stacks: "
                f"{listed}; the same index in two stacks is not the same layer, so the default "
                "layer_pattern cannot number them. Pass layer_pattern for the stack the curriculum "
                "drives, e.g. r'(?:^|\\.)decoder\\.layers\\.(\\d+)\\.' (the other stack's parameters "
                "then follow outside_policy)")
        self.layers = sorted(self.layer_params)
        self._check_layer_count()
        self.num_steps = 0
        self.current_layers: list[int] | None = None
        self._applied: tuple[int, ...] | bool | None = False  # False: nothing applied yet
        self._last_trainable: set[Any] | None = None  # layers (and _OUTSIDE) trainable last time
        self._trained: set[Any] = set()  # layers (and _OUTSIDE) that have been trainable
        self._optimizers: dict[int, torch.optim.Optimizer] = {}
        self._hooked: dict[int, Any] = {}
        self.num_resets = 0
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def _check_layer_count(self) -> None:
        if callable(self.source) and not hasattr(self.source, "trainable_layers"):
            return
        expected = getattr(self.source, "num_layers", None)
        if isinstance(expected, bool) or not isinstance(expected, int):
            return
        if self.layers != list(range(expected)):
            raise ValueError(
                f"the sampler's difficulty table has {expected} layers (0..{expected - 1}) but the "
                f"model's trainable parameters matching {self.pattern.pattern!r} are in layers "
                f"{self.layers}; layers the table does not cover would stay frozen for the whole "
                "curriculum (and table layers the model lacks cannot be trained). Score the data "
                "over the model's layers, restrict the trainable parameters (e.g. PEFT "
                "layers_to_transform) to the table's layers, or pass a callable source that maps "
                "the curriculum's layers to the model's explicitly")

    # -- core ----------------------------------------------------------------------------

    def _requested_layers(self, step: int) -> list[int] | None:
        if hasattr(self.source, "trainable_layers"):
            layers = self.source.trainable_layers
        else:
            layers = self.source(step)
        if layers is None:
            return None
        layers = sorted({int(i) for i in layers})
        unknown = [i for i in layers if i not in self.layer_params]
        if unknown:
            raise ValueError(f"trainable layers {unknown} requested, but the model's trainable "
                             f"parameters matching {self.pattern.pattern!r} are in layers "
                             f"{self.layers}")
        return layers

    def apply(self, step: int | None = None) -> list[int] | None:
        """Set ``requires_grad`` from the source now; returns the trainable layers (None: all).

        Args:
            step (int | None): step passed to a callable source; default: the number of
                :meth:`step` calls so far.

        Returns:
            list[int] | None: the trainable layers (None: all of them).
        """
        layers = self._requested_layers(self.num_steps if step is None else step)
        key = None if layers is None else tuple(layers)
        self.current_layers = layers
        if key == self._applied:
            return layers
        active: set[Any] = set(self.layers) if layers is None else set(layers)
        if self.outside_policy == "trainable":
            outside = True
        elif self.outside_policy == "frozen":
            outside = layers is None
        else:
            outside = False
        if outside:
            active.add(_OUTSIDE)
        if self.unfreeze == "reset" and self._last_trainable is not None:
            again = (active - self._last_trainable) & self._trained
            if again:
                self._reset_optimizer_state(again)
        for idx, params in self.layer_params.items():
            self._set(params, idx in active)
        self._set(self.outside_params, outside)
        self._trained |= active
        self._last_trainable = active
        self._applied = key
        logger.debug("LayerMaskScheduler: trainable layers %s", layers if layers is not None else "all")
        return layers

    def _reset_optimizer_state(self, groups: set[Any]) -> None:
        params = [p for g in groups for _, p in
                  (self.outside_params if g == _OUTSIDE else self.layer_params[g])]
        for opt in self._optimizers.values():
            for p in params:
                if opt.state.pop(p, None) is not None:
                    self.num_resets += 1
        logger.debug("LayerMaskScheduler: optimizer state reset for re-unfrozen %s", sorted(map(str, groups)))

    def step(self) -> list[int] | None:
        """Apply the mask for the current step, then count one step (call once per optimiser step).

        Returns:
            list[int] | None: the trainable layers for this step (None: all).
        """
        layers = self.apply(self.num_steps)
        self.num_steps += 1
        return layers

    @staticmethod
    def _set(params: Iterable[tuple[str, nn.Parameter]], trainable: bool) -> None:
        for _, p in params:
            p.requires_grad_(trainable)
            if not trainable:
                p.grad = None

    def _managed(self) -> list[tuple[str, nn.Parameter]]:
        return [x for ps in self.layer_params.values() for x in ps] + self.outside_params

    def frozen_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Managed parameters that are frozen right now.

        Returns:
            list[tuple[str, nn.Parameter]]: ``(name, parameter)`` pairs.
        """
        return [(n, p) for n, p in self._managed() if not p.requires_grad]

    def attach_optimizer(self, optimizer: Any) -> None:
        """Guard ``optimizer`` (once): before each step, frozen managed parameters get ``grad = None``.

        Args:
            optimizer: a ``torch.optim.Optimizer`` or a wrapper with ``.optimizer`` (accelerate).

        Raises:
            ValueError: the optimizer holds none of the managed parameters.
            NotImplementedError: a DeepSpeed optimizer.
        """
        opt = _innermost_optimizer(optimizer)
        if id(opt) in self._hooked:
            return
        managed = {id(p) for _, p in self._managed()}
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        if not managed & in_opt:
            raise ValueError("the optimizer holds none of the parameters this LayerMaskScheduler "
                             "manages; build it over the model's trainable parameters")

        def _drop_frozen_grads(_opt, _args, _kwargs):
            for _, p in self.frozen_parameters():
                p.grad = None

        self._optimizers[id(opt)] = opt
        self._hooked[id(opt)] = opt.register_step_pre_hook(_drop_frozen_grads)

    def remove_hooks(self) -> None:
        """Remove the optimizer hooks this scheduler registered."""
        for handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()
        self._optimizers.clear()

    @property
    def state(self) -> dict[str, Any]:
        """Which layers are trainable (JSON-serialisable, for logs)."""
        layers = self.current_layers
        trainable = self.layers if layers is None else layers
        return {"trainable_layers": None if layers is None else list(layers),
                "frozen_layers": [i for i in self.layers if i not in set(trainable)],
                "num_trainable_params": sum(p.numel() for _, p in self._managed() if p.requires_grad),
                "step": self.num_steps}

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs (JSON-serialisable): step count, current and previously trained layers.

        Returns:
            dict[str, Any]: restore it with :meth:`load_state_dict`.
        """
        def enc(groups: set[Any] | None) -> list[Any] | None:
            return None if groups is None else sorted(groups, key=str)

        return {"format": "torch_curriculum.layer_mask/1", "layers": list(self.layers),
                "num_steps": self.num_steps,
                "current_layers": None if self.current_layers is None else list(self.current_layers),
                "applied": self._applied is not False,
                "last_trainable": enc(self._last_trainable), "trained": enc(self._trained),
                "unfreeze": self.unfreeze, "num_resets": self.num_resets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the mask itself is set again by the next :meth:`apply`.

        Args:
            state (dict): what :meth:`state_dict` returned.

        Raises:
            ValueError: not a layer-mask state, or one saved for a model with other layers.
        """
        if not isinstance(state, dict) or state.get("format") != "torch_curriculum.layer_mask/1":
            raise ValueError("not a LayerMaskScheduler state (expected format "
                             "'torch_curriculum.layer_mask/1')")
        if list(state["layers"]) != self.layers:
            raise ValueError(f"the layer-mask state was saved for layers {state['layers']}, but this "
                             f"model's managed layers are {self.layers}")

        def dec(groups: list[Any] | None) -> set[Any] | None:
            return None if groups is None else {g if g == _OUTSIDE else int(g) for g in groups}

        self.num_steps = int(state["num_steps"])
        cur = state["current_layers"]
        self.current_layers = None if cur is None else [int(i) for i in cur]
        self._last_trainable = dec(state["last_trainable"])
        self._trained = dec(state["trained"]) or set()
        self.num_resets = int(state.get("num_resets", 0))
        self._applied = False  # the next apply() sets requires_grad on every managed parameter
