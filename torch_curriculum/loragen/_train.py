"""A plain-PyTorch training loop for the generator that takes any sampler and the curriculum hooks."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .._host import host_info
from ._generator import LoRAGenerator

__all__ = ["TrainResult", "evaluate_loss", "evaluate_per_sample_loss", "train_generator"]

logger = logging.getLogger(__name__)

_BATCH_KEYS = ("input_ids", "attention_mask", "cloud_states", "cloud_mask", "labels")


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in _BATCH_KEYS}


@torch.inference_mode()
def evaluate_loss(generator: LoRAGenerator, dataset: Dataset, collate_fn: Callable, *,
                  batch_size: int = 8) -> float:
    """Token-weighted mean LM loss over a whole dataset, in a fixed order, in eval mode.

    Args:
        generator (LoRAGenerator): the generator (its train/eval mode is restored afterwards).
        dataset (Dataset): items for ``collate_fn``.
        collate_fn (Callable): e.g. :class:`LoRAGenCollator`.
        batch_size (int): Default 8.

    Returns:
        float: sum of response-token cross-entropies / number of response tokens.
    """
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    total, tokens = 0.0, 0
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
        for batch in loader:
            out = generator(**_to(batch, device))
            total += float(out.lm_loss) * out.n_tokens
            tokens += out.n_tokens
    finally:
        generator.train(was_training)
    if tokens == 0:
        raise ValueError("evaluation dataset has no response tokens")
    return total / tokens


@torch.inference_mode()
def evaluate_per_sample_loss(generator: LoRAGenerator, dataset: Dataset, collate_fn: Callable, *,
                             batch_size: int = 8) -> list[float]:
    """Mean LM loss per example (over its response tokens), in eval mode, in dataset order.

    Args:
        generator (LoRAGenerator): the generator (its train/eval mode is restored afterwards).
        dataset (Dataset): items for ``collate_fn`` (which must return ``indices``).
        collate_fn (Callable): e.g. :class:`LoRAGenCollator`.
        batch_size (int): Default 8.

    Returns:
        list[float]: entry i is the loss of ``dataset[i]``.
    """
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    out = [math.nan] * len(dataset)
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
        for batch in loader:
            res = generator(**_to(batch, device))
            for idx, loss in zip(batch["indices"].tolist(), res.per_sample_loss.tolist()):
                out[idx] = float(loss)
    finally:
        generator.train(was_training)
    return out


@dataclass
class TrainResult:
    """Curves and per-sample records of one :func:`train_generator` run.

    Attributes:
        steps (int): optimisation steps done.
        samples_seen (int): training samples consumed.
        wall_time (float): seconds for the whole run (evaluations included).
        train_records (list[dict]): one per step (the JSONL ``train`` records).
        val_curve (list[dict]): ``{step, samples_seen, wall_time, loss}`` per evaluation.
        test_loss (float | None): test loss at the end (None without a test set).
        per_sample_losses (dict[int, list[float]]): dataset index -> the losses it got in each
            step it was drawn in.
        log_path (Path | None): the JSONL log.
    """

    steps: int = 0
    samples_seen: int = 0
    wall_time: float = 0.0
    train_records: list[dict[str, Any]] = field(default_factory=list)
    val_curve: list[dict[str, Any]] = field(default_factory=list)
    test_loss: float | None = None
    per_sample_losses: dict[int, list[float]] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def final_val_loss(self) -> float | None:
        """Last validation loss (None if never evaluated)."""
        return self.val_curve[-1]["loss"] if self.val_curve else None

    @property
    def train_losses(self) -> list[float]:
        """LM loss per step."""
        return [r["lm_loss"] for r in self.train_records]

    def per_sample_mean_loss(self) -> dict[int, float]:
        """Per dataset index, its loss averaged over the steps in which it was seen."""
        return {i: sum(v) / len(v) for i, v in self.per_sample_losses.items() if v}

    def steps_to_reach(self, target: float) -> int | None:
        """First evaluated step whose validation loss is <= target (None if never)."""
        for point in self.val_curve:
            if point["loss"] <= target:
                return point["step"]
        return None


def train_generator(generator: LoRAGenerator, train_dataset: Dataset, *, sampler: Sampler,
                    collate_fn: Callable, val_dataset: Dataset, steps: int,
                    test_dataset: Dataset | None = None, batch_size: int = 8, lr: float = 1e-3,
                    weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                    eval_every: int = 50, eval_batch_size: int | None = None,
                    pacing_callback: Callable[[float], Any] | None = None,
                    layer_mask_scheduler: Any = None, log_path: str | Path | None = None,
                    seed: int = 0, progress: bool = False, log_every: int = 1,
                    run_info: dict[str, Any] | None = None,
                    autocast_dtype: torch.dtype | None = None) -> TrainResult:
    """Train the generator for ``steps`` optimizer steps with AdamW, drawing batches from ANY sampler.

    Each step: one batch from ``DataLoader(train_dataset, sampler=sampler)``; when the sampler is
    exhausted the epoch counter rises, ``sampler.set_epoch(epoch)`` is called and iteration
    restarts. ``layer_mask_scheduler.step()`` runs after each batch is drawn and before its forward
    (its optimizer guard is attached too). After the optimizer step the LM loss goes to
    ``pacing_callback(loss)`` (or to ``sampler.update(loss)`` when no callback is given and the
    sampler has ``update``), so pacing acts on the next batches. Frozen parameters have
    ``grad=None`` (``zero_grad(set_to_none=True)``) and AdamW skips them, so they stay
    bit-identical.

    Logged per step (JSONL records ``{"type": "train", ...}``): step, epoch, loss, lm_loss,
    balance_loss, samples_seen, tokens, indices (the dataset indices of the batch), wall_time, lr, sampler_state, trainable_layers,
    layer_update_norm [L], layer_grad_norm [L] (before clipping), shared_grad_norm. Validation
    (``{"type": "val"}``) at step 0, every ``eval_every`` steps and at the end; ``{"type": "test"}``
    at the end.

    Args:
        generator (LoRAGenerator): the model to train (its parameters only).
        train_dataset (Dataset): items for ``collate_fn``; the sampler yields its indices.
        sampler (Sampler): any ``torch.utils.data.Sampler`` (curriculum or random).
        collate_fn (Callable): e.g. :class:`LoRAGenCollator`; must return ``indices``.
        val_dataset (Dataset): fixed held-out set for the validation loss.
        steps (int): optimizer steps.
        test_dataset (Dataset | None): evaluated once at the end. Default None.
        batch_size (int): Default 8.
        lr (float): AdamW learning rate. Default 1e-3.
        weight_decay (float): AdamW weight decay. Default 0.0.
        max_grad_norm (float | None): gradient clipping; None disables. Default 1.0.
        eval_every (int): validation period in steps. Default 50.
        eval_batch_size (int | None): Default ``batch_size``.
        pacing_callback (Callable | None): ``PacingCallback`` or any ``f(loss)``.
        layer_mask_scheduler: object with ``step()`` (and optionally ``attach_optimizer``), e.g.
            ``LayerMaskScheduler(generator, sampler)``.
        log_path (str | Path | None): JSONL log file (overwritten). Default None.
        seed (int): torch seed for dropout. Default 0.
        progress (bool): tqdm bar. Default False.
        log_every (int): compute the per-layer update norms every this many steps. Default 1.
        run_info (dict | None): extra fields of the first JSONL record ``{"type": "run", ...}``,
            which also holds the arguments and ``host`` (machine, CPU, torch threads and the
            generator's device; wall times depend on it).
        autocast_dtype (torch.dtype | None): the training forward and backward run under
            ``torch.autocast(device_type, dtype)`` (``torch.bfloat16``: cheaper steps on CPUs with
            bf16 matrix units and on GPUs; the parameters, gradients and optimizer stay fp32).
            Validation always runs without autocast, so validation losses stay comparable.
            Default None (no autocast).

    Returns:
        TrainResult

    Raises:
        ValueError: bad arguments; RuntimeError: the sampler yields nothing in an epoch.

    Example:
        >>> res = train_generator(gen, train_ds, sampler=RandomOrderSampler(d),  # doctest: +SKIP
        ...                       collate_fn=collator, val_dataset=val_ds, steps=100)
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                        ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
        raise ValueError(f"autocast_dtype must be a torch.dtype or None, got {autocast_dtype!r}")
    torch.manual_seed(seed)
    device = next(generator.parameters()).device
    eval_bs = eval_batch_size or batch_size
    params = list(generator.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loader = DataLoader(train_dataset, batch_size=batch_size, sampler=sampler,
                        collate_fn=collate_fn)
    result = TrainResult(log_path=Path(log_path) if log_path else None)
    log_file = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally

    def emit(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    if layer_mask_scheduler is not None and hasattr(layer_mask_scheduler, "attach_optimizer"):
        layer_mask_scheduler.attach_optimizer(optimizer)
    t0 = time.perf_counter()

    def validate(step: int) -> None:
        loss = evaluate_loss(generator, val_dataset, collate_fn, batch_size=eval_bs)
        point = {"step": step, "samples_seen": result.samples_seen,
                 "wall_time": time.perf_counter() - t0, "loss": loss}
        result.val_curve.append(point)
        emit({"type": "val", **point})
        logger.info("step %d val loss %.4f", step, loss)

    bar = None
    try:
        emit({"type": "run", "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "autocast_dtype": str(autocast_dtype).replace("torch.", "") if autocast_dtype else None,
              "sampler": type(sampler).__name__, "num_layers": generator.num_layers,
              "generator_config": generator.config.to_dict(), "host": host_info(device), **(run_info or {})})
        generator.train()
        validate(0)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc="train generator", unit="step")
        epoch = 0
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        it = iter(loader)
        batches_in_epoch = 0
        step = 0
        while step < steps:
            try:
                batch = next(it)
            except StopIteration:
                if batches_in_epoch == 0:
                    raise RuntimeError(f"the sampler yielded no index in epoch {epoch}") from None
                epoch += 1
                batches_in_epoch = 0
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                it = iter(loader)
                continue
            batches_in_epoch += 1
            if layer_mask_scheduler is not None:
                # after the sampler drew this batch, so the mask matches the pool it came from
                layer_mask_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                out = generator(**_to(batch, device))
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"non-finite loss {float(out.loss)} at step {step + 1}")
            out.loss.backward()
            grad_norms = generator.layer_grad_norms()
            shared_grad = generator.shared_grad_norm()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                               max_grad_norm)
            optimizer.step()
            step += 1
            indices = batch["indices"].tolist()
            result.samples_seen += len(indices)
            lm = float(out.lm_loss.detach())
            for idx, loss_i in zip(indices, out.per_sample_loss.tolist()):
                result.per_sample_losses.setdefault(idx, []).append(loss_i)
            record = {"type": "train", "step": step, "epoch": epoch, "loss": float(out.loss.detach()),
                      "lm_loss": lm, "balance_loss": float(out.balance_loss.detach()),
                      "samples_seen": result.samples_seen, "tokens": out.n_tokens,
                      "indices": indices,
                      "per_sample_loss": [round(float(x), 6) for x in out.per_sample_loss.tolist()],
                      "wall_time": time.perf_counter() - t0,
                      "lr": optimizer.param_groups[0]["lr"],
                      "sampler_state": _jsonable(getattr(sampler, "state", None)),
                      "trainable_layers": generator.trainable_layers(),
                      "layer_grad_norm": [round(float(x), 6) for x in grad_norms],
                      "shared_grad_norm": shared_grad}
            if step % log_every == 0 or step == steps:
                record["layer_update_norm"] = [
                    round(float(x), 6) for x in generator.layer_update_norms()]
            result.train_records.append(record)
            emit(record)
            if pacing_callback is not None:
                pacing_callback(lm)
            elif hasattr(sampler, "update"):
                sampler.update(lm)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lm:.3f}")
            if step % eval_every == 0 and step != steps:
                validate(step)
        result.steps = step
        validate(step)
        if test_dataset is not None:
            result.test_loss = evaluate_loss(generator, test_dataset, collate_fn,
                                             batch_size=eval_bs)
            emit({"type": "test", "step": step, "loss": result.test_loss})
        result.wall_time = time.perf_counter() - t0
        emit({"type": "end", "steps": step, "samples_seen": result.samples_seen,
              "wall_time": result.wall_time, "final_val_loss": result.final_val_loss,
              "test_loss": result.test_loss})
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return result


def _jsonable(value: Any) -> Any:
    """Sampler state made JSON-safe (tensors/NumPy to lists, NaN kept as None)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)
