"""Frozen cloud states: encode texts once with the cloud model's base decoder and cache them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_path, atomic_write_text

__all__ = ["CloudStateCache", "encode_cloud", "pad_states"]

logger = logging.getLogger(__name__)


def _token_ids(tokenizer, texts: Sequence[str], max_length: int,
               keep_prefix: int | None = None) -> list[list[int]]:
    """Token ids per text; over ``max_length`` is an error, or (``keep_prefix`` given) a left cut
    that keeps the first ``keep_prefix`` tokens (the system prompt) and the newest text, counted
    in a warning."""
    if keep_prefix is not None and not 0 <= keep_prefix < max_length:
        raise ValueError(f"keep_prefix must lie in [0, max_length={max_length}), got {keep_prefix}")
    ids, n_cut = [], 0
    for j, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"cloud text {j} must be a non-empty str, got {text!r}")
        row = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if len(row) > max_length:
            if keep_prefix is None:
                raise ValueError(f"cloud text {j} has {len(row)} tokens > max_length={max_length}; "
                                 "raise max_length, shorten the persona or pass keep_prefix= to cut "
                                 "the oldest context (no silent truncation)")
            row = row[:keep_prefix] + row[len(row) - (max_length - keep_prefix):]
            n_cut += 1
        ids.append(row)
    if n_cut:
        logger.warning("cloud texts: %d of %d were longer than max_length=%d tokens and were cut from "
                       "the left after their first %d tokens", n_cut, len(ids), max_length, keep_prefix)
    return ids


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[T_i, d]`` tensors into ``([N, T_max, d], mask [N, T_max] bool)``.

    Example:
        >>> s, m = pad_states([torch.ones(2, 3), torch.ones(1, 3)])
        >>> tuple(s.shape), m.sum().item()
        ((2, 2, 3), 3)
    """
    if not states:
        raise ValueError("pad_states needs at least one tensor")
    t_max = max(s.shape[0] for s in states)
    d = states[0].shape[-1]
    out = states[0].new_zeros(len(states), t_max, d)
    mask = torch.zeros(len(states), t_max, dtype=torch.bool)
    for j, s in enumerate(states):
        out[j, : s.shape[0]] = s
        mask[j, : s.shape[0]] = True
    return out, mask


@torch.inference_mode()
def encode_cloud(cloud_model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                 max_length: int = 512, layer: int | None = None,
                 dtype: torch.dtype = torch.float32, progress: bool = False,
                 keep_prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of the cloud model's base decoder (no LM head) for each text.

    Texts are tokenized with the model's own tokenizer (special tokens included), sorted by
    length into batches (right padding; the padded positions are dropped), and run under
    ``torch.inference_mode()``.

    Args:
        cloud_model (nn.Module): a Hugging Face causal LM or a bare decoder.
        tokenizer: its tokenizer (callable returning ``input_ids``).
        texts (Sequence[str]): non-empty texts (system prompt + persona).
        batch_size (int): texts per forward. Default 8.
        max_length (int): a text with more tokens is an error (never silently cut). Default 512.
        layer (int | None): None takes the decoder's final output (after its final norm);
            an int takes ``hidden_states[layer]`` (0 = embeddings). Default None.
        dtype (torch.dtype): dtype of the returned states. Default float32.
        progress (bool): show a tqdm bar. Default False.
        keep_prefix (int | None): None makes a text over ``max_length`` an error; an int cuts such
            texts from the left after their first ``keep_prefix`` tokens (the system prompt),
            keeping the newest context, and logs how many were cut. Default None.

    Returns:
        tuple: ``(states [N, T_max, d_c], mask [N, T_max] bool)``, in the order of ``texts``.

    Raises:
        ValueError: an empty text or one longer than ``max_length``.

    Example:
        >>> states, mask = encode_cloud(cloud, tok, ["You are a helpful bot."])  # doctest: +SKIP
    """
    per_text = _encode_list(cloud_model, tokenizer, list(texts), batch_size=batch_size,
                            max_length=max_length, layer=layer, dtype=dtype, progress=progress,
                            keep_prefix=keep_prefix)
    return pad_states(per_text)


# inference_mode here, not only on encode_cloud: CloudStateCache.encode calls this directly, and
# with autograd on, every stored state kept its batch's whole graph alive (24 GB on 224 texts).
@torch.inference_mode()
def _encode_list(cloud_model, tokenizer, texts, *, batch_size, max_length, layer, dtype,
                 progress, keep_prefix=None) -> list[torch.Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = _token_ids(tokenizer, texts, max_length, keep_prefix)
    decoder = cloud_model.get_decoder() if hasattr(cloud_model, "get_decoder") else cloud_model
    device = next(cloud_model.parameters()).device
    order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
    out: list[torch.Tensor | None] = [None] * len(ids)
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="cloud states", unit="batch")
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    for batch in batches:
        t_max = max(len(ids[j]) for j in batch)
        inp = torch.full((len(batch), t_max), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), t_max, dtype=torch.long)
        for row, j in enumerate(batch):
            inp[row, : len(ids[j])] = torch.tensor(ids[j])
            mask[row, : len(ids[j])] = 1
        res = decoder(input_ids=inp.to(device), attention_mask=mask.to(device), use_cache=False,
                      output_hidden_states=layer is not None)
        hidden = res.last_hidden_state if layer is None else res.hidden_states[layer]
        for row, j in enumerate(batch):
            out[j] = hidden[row, : len(ids[j])].to(dtype=dtype, device="cpu").clone()
    return out  # type: ignore[return-value]


class CloudStateCache:
    """Cloud states keyed by text, so every distinct system prompt + persona is encoded once.

    Args:
        cloud_model (nn.Module | None): the cloud LM; None for a cache filled by :meth:`add`
            or :meth:`load` only.
        tokenizer: the cloud tokenizer (needed with ``cloud_model``).
        batch_size (int): encoding batch size. Default 8.
        max_length (int): token limit per text (longer is an error unless ``keep_prefix``). Default 512.
        layer (int | None): which hidden state (see :func:`encode_cloud`). Default None.
        dtype (torch.dtype): storage dtype (bfloat16 halves memory). Default float32.
        keep_prefix (int | None): see :func:`encode_cloud`: None makes an over-long text an
            error; an int cuts it from the left after its first ``keep_prefix`` tokens. Default None.

    Example:
        >>> cache = CloudStateCache(cloud, tok)                       # doctest: +SKIP
        >>> cache.encode(texts, progress=True)                       # doctest: +SKIP
        >>> states, mask = cache.batch(texts[:4])                    # doctest: +SKIP
    """

    def __init__(self, cloud_model: nn.Module | None = None, tokenizer=None, *,
                 batch_size: int = 8, max_length: int = 512, layer: int | None = None,
                 dtype: torch.dtype = torch.float32, keep_prefix: int | None = None):
        if cloud_model is not None and tokenizer is None:
            raise ValueError("CloudStateCache: a cloud_model needs its tokenizer")
        self.cloud_model = cloud_model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.layer = layer
        self.dtype = dtype
        self.keep_prefix = keep_prefix
        self._states: dict[str, torch.Tensor] = {}
        self.hidden_size: int | None = None

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, text: str) -> bool:
        return text in self._states

    def add(self, text: str, states: torch.Tensor) -> None:
        """Store ``[T, d_c]`` states for ``text`` (e.g. computed elsewhere).

        Raises:
            ValueError: wrong rank or a width that differs from earlier entries.
        """
        if states.dim() != 2 or states.shape[0] == 0:
            raise ValueError(f"states for {text[:40]!r} must be [T>0, d], got {tuple(states.shape)}")
        if self.hidden_size is not None and states.shape[1] != self.hidden_size:
            raise ValueError(f"states for {text[:40]!r} have width {states.shape[1]}, the cache "
                             f"holds width {self.hidden_size}")
        self.hidden_size = int(states.shape[1])
        self._states[text] = states.detach().to(dtype=self.dtype, device="cpu")

    def encode(self, texts: Iterable[str], *, progress: bool = False) -> int:
        """Encode the texts not cached yet; returns how many were encoded.

        Raises:
            RuntimeError: a text is missing and the cache has no cloud model.
        """
        todo = list(dict.fromkeys(t for t in texts if t not in self._states))
        if not todo:
            return 0
        if self.cloud_model is None:
            raise RuntimeError(f"{len(todo)} cloud texts are not cached and the cache has no "
                               f"cloud model (first: {todo[0][:60]!r})")
        states = _encode_list(self.cloud_model, self.tokenizer, todo, batch_size=self.batch_size,
                              max_length=self.max_length, layer=self.layer, dtype=self.dtype,
                              keep_prefix=self.keep_prefix,
                              progress=progress)
        for text, s in zip(todo, states):
            self.add(text, s)
        logger.info("encoded %d cloud texts (%d cached)", len(todo), len(self._states))
        return len(todo)

    def __getitem__(self, text: str) -> torch.Tensor:
        if text not in self._states:
            self.encode([text])
        return self._states[text]

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(states [B, T_max, d_c] float32, mask [B, T_max] bool)`` for the texts."""
        self.encode(texts)
        states, mask = pad_states([self._states[t] for t in texts])
        return states.float(), mask

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write all cached states to one safetensors file (keys: sha1 of the text; the texts go
        into ``<path>.json``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({self._key(t): s.contiguous() for t, s in self._states.items()}, str(tmp))
        atomic_write_text(Path(str(path) + ".json"), json.dumps(
            {"texts": list(self._states), "layer": self.layer}, ensure_ascii=False))

    def load(self, path: str | Path) -> int:
        """Add the states saved by :meth:`save`; returns how many were loaded.

        Raises:
            FileNotFoundError: the file or its JSON sidecar is missing.
            ValueError: the file does not hold a state for a listed text.
        """
        from safetensors import safe_open

        path = Path(path)
        side = Path(str(path) + ".json")
        for p in (path, side):
            if not p.exists():
                raise FileNotFoundError(f"cloud-state cache file {p} does not exist")
        info = json.loads(side.read_text())
        if info.get("layer") != self.layer:
            raise ValueError(f"{path}: saved with layer={info.get('layer')}, this cache uses "
                             f"layer={self.layer}")
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for text in info["texts"]:
                key = self._key(text)
                if key not in keys:
                    raise ValueError(f"{path}: no states for text {text[:60]!r}")
                self.add(text, f.get_tensor(key))
        return len(info["texts"])
