"""Per-layer meta tokens of one language model: ``MetaTokenExtractor``.

For one model and one prompt, the meta token ``t_i`` of layer ``i`` is a vector pooled from the
output of decoder block ``i`` (0-based; the embedding output is not a layer). The LM head never runs:
the extractor calls the decoder stack (``model.get_decoder()`` / ``model.model``) and reads the
block outputs with forward hooks, pooling each layer as soon as it is computed, so only one layer's
``[B, T, d]`` activations are alive at a time.

Note on the last layer: Hugging Face's ``output_hidden_states`` replaces its last entry with the
output of the final norm. The extractor takes the raw output of the last decoder block instead, so
every layer is the same kind of quantity (a residual-stream state); the final norm would rescale
only the last layer.

Pooling (``pooling=``):

* ``"mean"`` (default): mean over the prompt's tokens that are (a) real (attention mask 1), (b) not
  the first token of the sequence (BOS, or the first word when a tokenizer adds no BOS: LLMs put a
  "massive activation" on the first position that would dominate any mean), and (c) not part of the
  system prompt (a token belongs to the system prompt when its first character lies inside
  ``system_text``; slow tokenizers without offsets: the first ``len(tokenize(system_text))`` tokens).
* ``"last"``: the state at the last real token (independent of left/right padding).
* ``"meta"``: LoRA-Gen style. ``meta_embeddings`` ``[M, d]`` (rows in the space of the model's input
  embeddings, used as they are, no scaling) are appended right after each prompt's last real token;
  ``t_i`` is the output of the last decoder block at meta position ``i``, so the result has M "layers"
  (when both models of a precompute use it, M must equal the number of compared layers).
* a callable ``f(hidden_states, attention_mask, info) -> [B, L, d]``: ``hidden_states`` is the tuple
  of the L decoder block outputs (``hidden_states[i]`` = block i, each ``[B, T, d]``),
  ``attention_mask`` ``[B, T]`` (bool) and ``info`` a dict with ``content_mask`` (the mean-pooling
  mask above), ``last_index`` ``[B]`` and ``system_tokens`` ``[B]``.

Example:
    >>> ex = MetaTokenExtractor(model, tokenizer, pooling="mean", batch_size=8)  # doctest: +SKIP
    >>> ex.extract(["Analyze ... hello there"]).shape                           # doctest: +SKIP
    torch.Size([1, 30, 576])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import SampleError, _same_kind

__all__ = ["DTYPES", "POOLINGS", "MetaTokenExtractor", "TokenizedPrompt", "cpu_has_bf16", "find_decoder",
           "prompt_parts", "resolve_dtype"]

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "last", "meta")
DTYPES = ("auto", "fp32", "bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix units (AVX512-BF16 or AMX-BF16), read from ``/proc/cpuinfo``.

    Args:
        cpuinfo (str | None): the text of ``/proc/cpuinfo``; None reads it (False where it does not exist).

    Returns:
        bool: True when the ``avx512_bf16`` or ``amx_bf16`` flag is present and oneDNN is available.

    Example:
        >>> cpu_has_bf16("flags : fpu avx512f avx512_bf16")
        True
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool({"avx512_bf16", "amx_bf16"} & flags) and torch.backends.mkldnn.is_available()


def resolve_dtype(name: str, device: str | torch.device = "cpu", *, cpuinfo: str | None = None) -> torch.dtype:
    """The compute dtype for ``--dtype``: ``fp32``, ``bf16``, or ``auto`` (bf16 on CUDA and on CPUs with
    bf16 matrix units, see :func:`cpu_has_bf16`; fp32 elsewhere).

    Raises:
        ValueError: an unknown name.

    Example:
        >>> resolve_dtype("auto", "cpu", cpuinfo="flags : fpu sse2")
        torch.float32
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    dev = torch.device(device)
    if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_bf16(cpuinfo)):
        return torch.bfloat16
    return torch.float32


def find_decoder(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (the module with ``.layers``), without its LM head.

    Args:
        model (nn.Module): a ``*ForCausalLM`` model or its decoder (``LlamaModel`` ...).

    Returns:
        nn.Module: a module with a ``layers`` ModuleList and ``get_input_embeddings()``.

    Raises:
        TypeError: no decoder stack with ``.layers`` can be found.
    """
    candidates: list[nn.Module] = [model]
    for name in ("model", "language_model", "decoder", "transformer"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            candidates.append(sub)
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(Exception):
            candidates.insert(1, get_decoder())
    for c in candidates:
        if isinstance(getattr(c, "layers", None), nn.ModuleList) and hasattr(c, "get_input_embeddings"):
            return c
    raise TypeError(f"cannot find the decoder stack (a module with a `layers` ModuleList) of "
                    f"{type(model).__name__}; pass a llama/qwen2/gemma3-style causal LM or its base model")


def prompt_parts(item: Any) -> tuple[str, str]:
    """``(text, system_text)`` of one prompt: a ``str`` (no system part), an object with ``.text``
    (and optionally ``.system_text``, e.g. ``torch_curriculum.data.Prompt``) or a ``(text, system_text)`` pair.

    Raises:
        TypeError: anything else, or a system text that is not a prefix of the text.
    """
    if isinstance(item, str):
        text, system = item, ""
    elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
        text, system = item
    elif isinstance(getattr(item, "text", None), str):
        text, system = item.text, getattr(item, "system_text", "") or ""
    else:
        raise TypeError(f"a prompt must be a str, a (text, system_text) pair or an object with .text; "
                        f"got {type(item).__name__}")
    if not text.startswith(system):
        raise TypeError(f"system_text must be a prefix of text; got system_text={system[:60]!r} "
                        f"and text={text[:60]!r}")
    return text, system


@dataclass
class TokenizedPrompt:
    """One tokenized prompt: token ids and how many leading tokens are system tokens."""

    ids: list[int]
    system_tokens: int
    truncated: int = 0


class MetaTokenExtractor:
    """Per-layer meta tokens ``[B, L, d]`` of a causal LM, without its LM head.

    Args:
        model (nn.Module): a Hugging Face causal LM (llama, qwen2, gemma3, ...) or its decoder.
        tokenizer: its tokenizer (a fast tokenizer gives exact system-prompt boundaries via offsets).
        pooling (str | Callable): ``"mean"`` (default), ``"last"``, ``"meta"`` or a callable
            (see the module docstring for the exact definitions).
        meta_embeddings (torch.Tensor | None): ``[M, d]`` meta-token input embeddings; required for
            (and only for) ``pooling="meta"``.
        batch_size (int): prompts per forward pass (length-bucketed). Defaults to 16.
        max_length (int): token budget per prompt (meta tokens not counted). Defaults to 512.
        truncation (str): ``"error"`` (default: a longer prompt is an error naming it) or ``"left"``
            (drop the oldest non-system tokens; logged and listed in ``last_truncated``).
        device (str | torch.device | None): where the inputs go; the model must already be there
            (it is not moved). None = the device of the model's parameters.
        dtype (torch.dtype | None): compute (autocast) dtype: ``torch.bfloat16`` autocasts on any device
            (on CPUs with bf16 matrix units that is ~1.7x faster, see :func:`resolve_dtype`),
            ``torch.float32`` runs the model as it is; None = bfloat16 on CUDA, the model's own dtype on CPU.
        padding_side (str | None): ``"left"`` / ``"right"``; None = the tokenizer's (or right).

    Raises:
        ValueError: bad pooling, missing/unexpected/mis-shaped meta_embeddings, bad sizes.
        TypeError: the model has no recognisable decoder stack.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        pooling: str | Callable = "mean",
        *,
        meta_embeddings: torch.Tensor | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        truncation: str = "error",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        padding_side: str | None = None,
    ):
        if not callable(pooling) and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} or a callable, got {pooling!r}")
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        if truncation not in ("error", "left"):
            raise ValueError(f"truncation must be 'error' or 'left', got {truncation!r}")
        self.model = model
        self.decoder = find_decoder(model)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.truncation = truncation
        self.device = torch.device(device) if device is not None else next(self.decoder.parameters()).device
        self.dtype = dtype
        side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        self.padding_side = side
        self.hidden_size = int(self.decoder.get_input_embeddings().weight.shape[1])
        self.num_model_layers = len(self.decoder.layers)
        if pooling == "meta":
            if meta_embeddings is None:
                raise ValueError("pooling='meta' needs meta_embeddings of shape [M, d]")
            meta = torch.as_tensor(meta_embeddings).detach()
            if meta.dim() != 2 or meta.shape[1] != self.hidden_size or meta.shape[0] < 1:
                raise ValueError(f"meta_embeddings must have shape [M, {self.hidden_size}] (M >= 1), "
                                 f"got {tuple(meta.shape)}")
            if not bool(torch.isfinite(meta).all()):
                raise ValueError("meta_embeddings hold NaN/Inf values")
            self.meta_embeddings: torch.Tensor | None = meta
        elif meta_embeddings is not None:
            raise ValueError(f"meta_embeddings are only used with pooling='meta', not {pooling!r}")
        else:
            self.meta_embeddings = None
        self.last_truncated: list[int] = []
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    @property
    def num_layers(self) -> int | None:
        """Layers of the output: the decoder's block count, M for ``meta``, None (unknown) for a callable."""
        if self.pooling == "meta":
            return int(self.meta_embeddings.shape[0])
        if callable(self.pooling):
            return None
        return self.num_model_layers

    def describe(self) -> dict[str, Any]:
        """JSON-able description for provenance (pooling, sizes, padding, truncation)."""
        pooling = self.pooling if isinstance(self.pooling, str) else \
            f"callable:{getattr(self.pooling, '__module__', '?')}.{getattr(self.pooling, '__qualname__', '?')}"
        out = {"pooling": pooling, "num_model_layers": self.num_model_layers, "hidden_size": self.hidden_size,
               "max_length": self.max_length, "truncation": self.truncation, "batch_size": self.batch_size,
               "layer_output": "raw decoder block output (before the final norm)",
               "compute_dtype": self._compute_dtype_name()}
        if self.meta_embeddings is not None:
            out["num_meta_tokens"] = int(self.meta_embeddings.shape[0])
        return out

    def _compute_dtype_name(self) -> str:
        if self.dtype == torch.float32 or (self.dtype is None and self.device.type != "cuda"):
            return str(next(self.decoder.parameters()).dtype).replace("torch.", "")
        return str(self.dtype or torch.bfloat16).replace("torch.", "")

    # ----------------------------------------------------------------------------- tokenization
    def tokenize(self, prompts: Sequence[Any]) -> list[TokenizedPrompt]:
        """Tokenize prompts with the model's tokenizer, marking system tokens and applying max_length.

        Raises:
            ValueError: a prompt longer than ``max_length`` with ``truncation="error"``, or one whose
                system part alone fills the budget.
        """
        parts = [prompt_parts(p) for p in prompts]
        texts = [t for t, _ in parts]
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        # chat-template text already holds its special tokens (Prompt.add_special_tokens is False)
        flags = [bool(getattr(p, "add_special_tokens", True)) for p in prompts]
        enc: dict[str, list] = {"input_ids": [None] * len(texts), "offset_mapping": [None] * len(texts)}
        for flag in sorted(set(flags)):
            idx = [i for i, f in enumerate(flags) if f == flag]
            part = self.tokenizer([texts[i] for i in idx], add_special_tokens=flag, return_offsets_mapping=fast,
                                  return_attention_mask=False, truncation=False)
            for j, i in enumerate(idx):
                enc["input_ids"][i] = part["input_ids"][j]
                if fast:
                    enc["offset_mapping"][i] = part["offset_mapping"][j]
        out: list[TokenizedPrompt] = []
        self.last_truncated = []
        sys_cache: dict[tuple[str, bool], int] = {}
        for i, ((_, system), ids) in enumerate(zip(parts, enc["input_ids"])):
            ids = list(ids)
            if not system:
                n_sys = 0
            elif fast:
                n_sys = sum(1 for (s, _e) in enc["offset_mapping"][i] if s < len(system))
            else:
                key = (system, flags[i])
                if key not in sys_cache:
                    sys_cache[key] = len(self.tokenizer(system, add_special_tokens=flags[i])["input_ids"])
                n_sys = sys_cache[key]
            dropped = 0
            if len(ids) > self.max_length:
                if self.truncation == "error":
                    raise ValueError(f"prompt {i} has {len(ids)} tokens > max_length={self.max_length}; "
                                     "shorten the context (format_prompt(max_length=...)) or use truncation='left'")
                keep = max(n_sys, 1)
                if keep >= self.max_length:
                    raise ValueError(f"prompt {i}: the system prompt alone takes {keep} tokens >= "
                                     f"max_length={self.max_length}")
                dropped = len(ids) - self.max_length
                ids = ids[:keep] + ids[keep + dropped:]
                self.last_truncated.append(i)
            out.append(TokenizedPrompt(ids, n_sys, dropped))
        if self.last_truncated:
            logger.warning("truncated %d prompt(s) from the left to max_length=%d: %s",
                           len(self.last_truncated), self.max_length, self.last_truncated[:20])
        return out

    # ----------------------------------------------------------------------------- batching
    def _collate(self, toks: Sequence[TokenizedPrompt], indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pad one bucket; also builds the content mask, last index and meta positions."""
        n_meta = 0 if self.meta_embeddings is None else int(self.meta_embeddings.shape[0])
        lens = [len(toks[i].ids) for i in indices]
        width = max(lens) + n_meta
        b = len(indices)
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.bool)
        content = torch.zeros(b, width, dtype=torch.bool)
        meta_pos = torch.zeros(b, max(n_meta, 1), dtype=torch.long)
        for r, i in enumerate(indices):
            tp = toks[i]
            n = len(tp.ids) + n_meta
            start = width - n if self.padding_side == "left" else 0
            input_ids[r, start:start + len(tp.ids)] = torch.tensor(tp.ids, dtype=torch.long)
            mask[r, start:start + n] = True
            # content = real prompt tokens after the first token and after the system prompt
            c0 = start + max(1, tp.system_tokens)
            content[r, c0:start + len(tp.ids)] = True
            if n_meta:
                meta_pos[r] = torch.arange(start + len(tp.ids), start + n)
        position_ids = (mask.long().cumsum(1) - 1).clamp_min(0)
        last_index = (mask.long() * torch.arange(width)).argmax(dim=1)
        if n_meta:
            # the last real position is the last meta token; 'last' pooling is not combined with meta
            last_index = meta_pos[:, -1]
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
                "content_mask": content, "last_index": last_index, "meta_pos": meta_pos,
                "system_tokens": torch.tensor([toks[i].system_tokens for i in indices])}

    def buckets(self, toks: Sequence[TokenizedPrompt]) -> list[list[int]]:
        """Length-bucketed batches: indices sorted by token length (longest first, stable), chunked."""
        order = sorted(range(len(toks)), key=lambda i: (-len(toks[i].ids), i))
        return [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]

    # ----------------------------------------------------------------------------- forward
    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.dtype or torch.bfloat16)
        if self.dtype is not None:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the decoder on one padded batch and pool: ``[B, L, d]`` float32 on CPU."""
        dev = self.device
        mask = batch["attention_mask"].to(dev)
        content = batch["content_mask"].to(dev)
        last_index = batch["last_index"].to(dev)
        layers = self.decoder.layers
        n_layers = len(layers)
        b = mask.shape[0]
        rows = torch.arange(b, device=dev)
        pooled: list[torch.Tensor | None] = [None] * n_layers
        captured: list[torch.Tensor | None] = [None] * n_layers
        pooling = self.pooling
        if pooling == "mean":
            counts = content.sum(1, keepdim=True)
            bad = (counts[:, 0] == 0).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"prompts at batch rows {bad} have no tokens after the first token and the "
                                 "system prompt; mean pooling needs at least one content token")
            weights = content.unsqueeze(-1)

        def make_hook(i: int):
            def hook(_module, _args, output):
                h = output[0] if isinstance(output, tuple) else output
                if pooling == "mean":
                    # masked_fill (not a product) so NaN/garbage at padded positions cannot leak in
                    s = h.masked_fill(~weights, 0).sum(1, dtype=torch.float32)
                    pooled[i] = s / counts
                elif pooling == "last":
                    pooled[i] = h[rows, last_index].float()
                elif pooling == "meta":
                    if i == n_layers - 1:
                        pooled[i] = h[rows.unsqueeze(1), batch["meta_pos"].to(dev)].float()
                else:
                    captured[i] = h
            return hook

        handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
        try:
            kwargs: dict[str, Any] = {"attention_mask": mask.long(), "position_ids": batch["position_ids"].to(dev),
                                      "use_cache": False}
            ids = batch["input_ids"].to(dev)
            if self.meta_embeddings is not None:
                emb = self.decoder.get_input_embeddings()(ids)
                meta = self.meta_embeddings.to(device=dev, dtype=emb.dtype)
                emb[rows.unsqueeze(1), batch["meta_pos"].to(dev)] = meta.unsqueeze(0).expand(b, -1, -1)
                kwargs["inputs_embeds"] = emb
            else:
                kwargs["input_ids"] = ids
            with self._autocast():
                self.decoder(**kwargs)
        finally:
            for hd in handles:
                hd.remove()
        if pooling == "meta":
            out = pooled[-1]
        elif callable(pooling):
            info = {"content_mask": content, "last_index": last_index, "system_tokens": batch["system_tokens"]}
            out = pooling(tuple(captured), mask, info)
            if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != b:
                raise ValueError(f"the pooling callable must return a [B={b}, L, d] tensor, got "
                                 f"{getattr(out, 'shape', type(out))}")
        else:
            out = torch.stack(pooled, dim=1)
        return out.float().cpu()

    def extract(self, prompts: Sequence[Any], *, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Per-layer meta tokens of each prompt.

        Args:
            prompts (Sequence): strings, ``(text, system_text)`` pairs or objects with ``.text`` /
                ``.system_text`` (``torch_curriculum.data.Prompt``).
            progress (Callable[[int], None] | None): called with the number of prompts after each batch.

        Returns:
            torch.Tensor: ``[B, L, d]`` float32 on CPU, in the order of ``prompts`` (L = decoder
            blocks, or M for ``meta``).

        Raises:
            ValueError: an over-long prompt (truncation="error"), a prompt with no content token for
                ``mean``, or a bad callable output.
        """
        if len(prompts) == 0:
            raise ValueError("no prompts to extract")
        toks = self.tokenize(prompts)
        vocab = int(self.decoder.get_input_embeddings().weight.shape[0])
        for i, tp in enumerate(toks):
            if tp.ids and (max(tp.ids) >= vocab or min(tp.ids) < 0):
                bad = next(t for t in tp.ids if t >= vocab or t < 0)
                raise ValueError(f"prompt {i}: the tokenizer produced token id {bad}, outside the model's "
                                 f"vocabulary [0, {vocab}); tokenizer and model do not belong together")
        result: torch.Tensor | None = None
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            with torch.inference_mode():
                for idx in self.buckets(toks):
                    batch = self._collate(toks, idx)
                    if self.pooling == "mean":
                        empty = [idx[r] for r in (batch["content_mask"].sum(1) == 0).nonzero()[:, 0].tolist()]
                        if empty:
                            raise SampleError(f"prompt {empty[0]} has no tokens after the first token and the "
                                              "system prompt; mean pooling needs at least one content token"
                                              + (f" (also prompts {empty[1:]})" if len(empty) > 1 else ""))
                    try:
                        vec = self.forward_batch(batch)
                    except ValueError as e:
                        raise _same_kind(e)(f"{e} (prompt indices of this batch: {idx})") from e
                    if result is None:
                        result = torch.empty(len(toks), vec.shape[1], vec.shape[2], dtype=torch.float32)
                    elif vec.shape[1:] != result.shape[1:]:
                        raise ValueError(f"pooling returned [B, {vec.shape[1]}, {vec.shape[2]}] for prompts {idx} but "
                                         f"[B, {result.shape[1]}, {result.shape[2]}] before; a pooling callable "
                                         "must return [B, L, d] with a fixed L and d")
                    result[torch.tensor(idx)] = vec
                    if progress is not None:
                        progress(len(idx))
        finally:
            self.decoder.train(was_training)
        return result
