"""Cheap per-sample difficulty signals from bare language models (the controls of H1).

A user who does not want to run a cloud model could rank samples by simpler things: the response's
length, the bare edge model's loss on it, the cloud-minus-edge loss gap, or the IFD score of Li et
al. (2024, "From Quantity to Quality", instruction-following difficulty = loss(response | prompt) /
loss(response alone)). These functions compute them per sample, batched and length-bucketed,
under ``torch.inference_mode()``, with the LM head applied only at the response positions.

A sample is a ``(prompt, response)`` pair of strings. The prompt is tokenized with the tokenizer's
special tokens (e.g. BOS), the response as ``" " + response`` without them, plus EOS when
``add_eos`` -- the layout of :func:`torch_curriculum.loragen.build_examples`, so the bare edge loss
here is the loss of the untrained (zero-initialised) generator on the same example.
:func:`dialogue_pairs` builds those pairs from ``DialogueSample``s with the generator's prompt layout.

Example:
    >>> pairs = [("Dialogue:\\nhi\\nYou:", "hello there")]
    >>> losses = response_losses(model, tokenizer, pairs)        # doctest: +SKIP
    >>> ifd = ifd_scores(model, tokenizer, pairs)                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["dialogue_pairs", "ifd_scores", "response_lengths", "response_losses", "tokenize_pairs"]


def dialogue_pairs(samples: Sequence[Any], *, include_persona: bool = True,
                   max_context_turns: int = 4) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs in the generator's edge-prompt layout.

    Args:
        samples (Sequence): ``DialogueSample`` objects (or dicts) with ``persona``, ``context``,
            ``response``.
        include_persona (bool): persona in the prompt, as in ``build_examples``. Default True.
        max_context_turns (int): context turns kept. Default 4.

    Returns:
        list[tuple[str, str]]

    Raises:
        ValueError: a sample without a non-empty response (named by its index).
    """
    from ..loragen._data import _edge_prompt, _field

    out = []
    for i, s in enumerate(samples):
        response = _field(s, "response")
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"sample {i} ({_field(s, 'sample_id')!r}): response must be a non-empty str")
        out.append((_edge_prompt(s, include_persona, max_context_turns), response.strip()))
    return out


def _check_pairs(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    out = []
    for i, p in enumerate(pairs):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(t, str) for t in p)):
            raise ValueError(f"sample {i}: expected a (prompt, response) pair of str, got {p!r}")
        if not p[1].strip():
            raise ValueError(f"sample {i}: the response is empty")
        out.append((p[0], p[1]))
    if not out:
        raise ValueError("no samples")
    return out


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], *, with_prompt: bool = True,
                   add_eos: bool = True, max_length: int | None = None) -> list[tuple[list[int], int]]:
    """Token ids and the number of prompt tokens of every sample.

    With ``with_prompt=False`` the prompt is replaced by the empty string (so only the tokenizer's
    special prefix, e.g. BOS, precedes the response): the "response alone" of IFD.

    Args:
        tokenizer: a Hugging Face tokenizer.
        pairs (Sequence[tuple[str, str]]): ``(prompt, response)``.
        with_prompt (bool): Default True.
        add_eos (bool): append EOS to the response (when the tokenizer has one). Default True.
        max_length (int | None): token limit, applied as ``build_examples`` does: the prompt is cut
            from the left (keeping its first token and at least 8 tokens), then the response's tail.
            Default None (no limit).

    Returns:
        list[tuple[list[int], int]]: ``(ids, n_prompt_tokens)`` per sample.

    Raises:
        ValueError: a malformed pair, or ``max_length`` < 2.
    """
    pairs = _check_pairs(pairs)
    if max_length is not None and max_length < 8:
        raise ValueError(f"max_length must be >= 8 (as in build_examples), got {max_length}")
    eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None
    out = []
    for prompt, response in pairs:
        p_ids = list(tokenizer(prompt if with_prompt else "", add_special_tokens=True)["input_ids"])
        r_ids = list(tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"])
        if eos is not None:
            r_ids.append(int(eos))
        if max_length is not None and len(p_ids) + len(r_ids) > max_length:
            # exactly build_examples' rule: keep >= 8 prompt tokens (its first, BOS-like, one included)
            # and cut the response's tail if it alone is too long
            keep_prompt = max(min(len(p_ids), 8), max_length - len(r_ids))
            r_ids = r_ids[: max_length - keep_prompt]
            p_ids = p_ids[:1] + p_ids[len(p_ids) - (keep_prompt - 1):] if keep_prompt > 1 else p_ids[:1]
        out.append((p_ids + r_ids, len(p_ids)))
    return out


def response_lengths(tokenizer: Any, pairs: Sequence[tuple[str, str]], *, add_eos: bool = True) -> np.ndarray:
    """Number of response tokens per sample (EOS included when ``add_eos``).

    Returns:
        np.ndarray: float64 ``[N]``.

    Example:
        >>> response_lengths(tok, [("hi", "hello there")])  # doctest: +SKIP
        array([3.])
    """
    return np.array([len(ids) - n_p for ids, n_p in tokenize_pairs(tokenizer, pairs, add_eos=add_eos)],
                    dtype=np.float64)


def _decoder_and_head(model: Any) -> tuple[Any, Any, float | None]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return decoder, head, softcap


@torch.inference_mode()
def _losses(model: Any, seqs: list[tuple[list[int], int]], *, batch_size: int, pad_id: int) -> np.ndarray:
    """Mean CE per sample over the tokens after the prompt that have a predecessor; NaN if none."""
    decoder, head, softcap = _decoder_and_head(model)
    device = next(model.parameters()).device
    out = np.full(len(seqs), np.nan, dtype=np.float64)
    # length-bucketed: similar lengths share a batch, so little padding is computed
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        t_max = max(len(seqs[i][0]) for i in rows)
        ids = torch.full((len(rows), t_max), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), t_max, dtype=torch.long)
        labels = torch.full((len(rows), t_max), -100, dtype=torch.long)
        for r, i in enumerate(rows):
            seq, n_p = seqs[i]
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
            labels[r, max(n_p, 1):len(seq)] = torch.tensor(seq[max(n_p, 1):])
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        target = labels[:, 1:]
        sel = target != -100
        if not bool(sel.any()):
            continue
        logits = head(hidden[:, :-1][sel]).float()                  # only the response positions
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        ce = F.cross_entropy(logits, target[sel], reduction="none")
        row_of = sel.nonzero()[:, 0]
        per_sum = torch.zeros(len(rows), device=ce.device, dtype=torch.float64).index_add_(0, row_of, ce.double())
        count = sel.sum(dim=1)
        for r, i in enumerate(rows):
            if int(count[r]) > 0:
                out[i] = float(per_sum[r] / count[r])
    return out


def response_losses(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, with_prompt: bool = True,
                    batch_size: int = 8, max_length: int | None = None, add_eos: bool = True) -> np.ndarray:
    """Per-sample LM loss of the response (mean cross-entropy per response token, nats).

    The model is run once per batch through its decoder; the LM head is applied only at the
    positions that predict a response token. With ``with_prompt=False`` the response is scored
    alone (after the tokenizer's special prefix); its first token then has no predecessor and is
    not scored when there is no such prefix.

    Args:
        model: a Hugging Face causal LM (any dtype/device; logits are taken in float32).
        tokenizer: its tokenizer.
        pairs (Sequence[tuple[str, str]]): ``(prompt, response)`` per sample.
        with_prompt (bool): condition on the prompt. Default True.
        batch_size (int): samples per forward pass. Default 8.
        max_length (int | None): token limit (see :func:`tokenize_pairs`). Default None.
        add_eos (bool): score EOS after the response too. Default True.

    Returns:
        np.ndarray: float64 ``[N]``; NaN where no response token could be scored.

    Raises:
        ValueError: malformed pairs, ``batch_size`` < 1.

    Example:
        >>> edge_loss = response_losses(edge, edge_tok, dialogue_pairs(samples))  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    seqs = tokenize_pairs(tokenizer, pairs, with_prompt=with_prompt, add_eos=add_eos, max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return _losses(model, seqs, batch_size=batch_size, pad_id=int(pad))


def ifd_scores(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8,
               max_length: int | None = None, add_eos: bool = True,
               conditional: np.ndarray | None = None) -> np.ndarray:
    """Instruction-following difficulty (Li et al., 2024): loss(response | prompt) / loss(response alone).

    Above 1 the prompt does not help the model predict the response (a hard or incoherent sample);
    well below 1 it helps a lot.

    Args:
        model (Any): a Hugging Face causal LM, as in :func:`response_losses`.
        tokenizer (Any): its tokenizer.
        pairs (Sequence[tuple[str, str]]): ``(prompt, response)`` per sample.
        batch_size (int): samples per forward pass. Default 8.
        max_length (int | None): token limit (see :func:`tokenize_pairs`). Default None.
        add_eos (bool): score EOS after the response too. Default True.
        conditional (np.ndarray | None): already computed ``response_losses(..., with_prompt=True)``
            (saves one pass). Default None.

    Returns:
        np.ndarray: float64 ``[N]`` (NaN where either loss is undefined or the unconditional loss is 0).

    Example:
        >>> ifd = ifd_scores(edge, edge_tok, pairs)  # doctest: +SKIP
    """
    if conditional is None:
        conditional = response_losses(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                                      add_eos=add_eos)
    alone = response_losses(model, tokenizer, pairs, with_prompt=False, batch_size=batch_size,
                            max_length=max_length, add_eos=add_eos)
    conditional = np.asarray(conditional, dtype=np.float64)
    if conditional.shape != alone.shape:
        raise ValueError(f"conditional has shape {conditional.shape}, expected {alone.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(alone > 0, conditional / alone, np.nan)
