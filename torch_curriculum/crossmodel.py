"""Cross-model difficulty signals that can see the response: ``compute_signals`` / ``CrossModelSignals``.

The meta tokens of :mod:`torch_curriculum.extraction` read the prompt only, and their raw distances
across model families mostly measure width, norm and tokenizer artefacts. The signals here are
per-sample, per-layer ``[B, L]`` arrays over the L edge layers (edge layer j is compared with cloud
layer ``m(j)``, :func:`torch_curriculum.alignment.default_layer_map` unless a map is given), computed
from **one** forward pass per model per batch, whatever subset of them is asked for.

A sample is a ``(prompt, response)`` pair. The model input is ``prompt + turn_prefix`` (conditioned
on, never scored) followed by the *scored text* (the response, preceded by a space when the turn
prefix ends in a non-space character). Each model uses its own tokenizer; prompt and scored text are
tokenized separately so that the scored tokens encode exactly the scored text, for both models.
No EOS is scored: it is a tokenizer convention, not text.

Signals (``signals=`` names):

* ``response``: response-conditioned meta tokens, ``[B, L, d]`` per model (keys ``response_cloud``
  with the mapped cloud layers, ``response_edge``): the output of decoder block i (before the final
  norm), pooled over the scored response tokens (``mean``) or taken at the response's last token
  (``last``).
* ``logit_lens_gap``: ``d_j = bpb_edge(j) - bpb_cloud(m(j))``. ``bpb_model(i)`` is the response's
  cross-entropy, in bits per UTF-8 byte of the scored text, of the logit lens of layer i: the model's
  own final norm and LM head applied to block i's output at the positions that predict a response
  token. Per byte, the two tokenizers cancel. At the last layer this is RHO-LOSS's reducible loss
  (edge minus reference model). Keys ``logit_lens_gap``, plus ``edge_bpb`` and ``cloud_bpb``
  (mapped) which come with it for free.
* ``edge_bpb``: the edge model's per-layer bpb alone (a reference signal of the same family; no
  cloud pass is needed if nothing else asks for one).
* ``vocab_kl``: ``KL(p_cloud || p_edge)`` of the two models' logit-lens next-token distributions at
  the last prompt position (the distribution of the first response token), over the *shared
  vocabulary*: the token texts that both tokenizers have (see :class:`SharedVocabulary`), each
  distribution summed onto those texts and renormalised. Compares *which* continuations the models
  expect, but only over the shared part (its mass is reported as ``vocab_shared_mass_cloud`` /
  ``_edge``).
* ``uld``: the sorted-probability distance of Universal Logit Distillation (Boizard et al., 2024):
  ``sum_i |sort(p_cloud)_i - sort(p_edge)_i|`` with both distributions sorted in decreasing order
  and the shorter one padded with zeros. Needs no token matching at all (any two tokenizers), but
  it only compares the *shape* of the distributions (confidence / spread), not which tokens they
  rank high: two models that are equally sure of different words have distance 0.
* ``knn_agreement``: ``d_j = 1 - |N_cloud ∩ N_edge| / k`` (mutual k-NN, Huh et al., 2024): the k
  nearest neighbours of the sample's response meta token among a fixed reference set
  (:meth:`CrossModelSignals.reference`), in cloud layer m(j) and in edge layer j. Each model's
  vectors are centred by the reference set's mean and compared by cosine similarity (LLM states are
  anisotropic). A sample that is itself in the reference set never counts as its own neighbour
  (matched by sample id): it is scored against the other references, centred by their mean, exactly
  as it would be had it not been drawn.

Cost: the forward passes run the decoder stacks only; the LM heads run at the response positions
(bpb signals) or at one position (vocabulary signals), of the mapped layers only, chunked over the
vocabulary (``vocab_chunk`` rows at a time) so memory stays bounded by ``positions x vocab_chunk``.

Example:
    >>> out = compute_signals((cloud, cloud_tok), (edge, edge_tok), [("Dialogue: hi", "hello")],
    ...                       signals=["logit_lens_gap", "uld"])             # doctest: +SKIP
    >>> out["logit_lens_gap"].shape                                        # doctest: +SKIP
    (1, 30)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .alignment import resolve_layer_map
from .data import SampleError
from .extraction import find_decoder, prompt_parts

__all__ = [
    "POOLINGS",
    "SIGNALS",
    "CrossModelSignals",
    "KnnReference",
    "LogitLens",
    "SharedVocabulary",
    "compute_signals",
    "knn_agreement",
    "shared_vocab_kl",
    "token_texts",
    "uld_distance",
]

SIGNALS = ("response", "logit_lens_gap", "edge_bpb", "vocab_kl", "uld", "knn_agreement")
POOLINGS = ("mean", "last")
_LN2 = math.log(2.0)
_NORM_NAMES = ("norm", "final_layernorm", "final_norm", "ln_f", "norm_f")


# --------------------------------------------------------------------------------------------------
# logit lens parts


class LogitLens:
    """A causal LM's decoder stack, final norm and LM head, for reading any layer through the head.

    Args:
        model (nn.Module): a Hugging Face ``*ForCausalLM`` (llama, qwen2, gemma3, mistral, phi3, ...)
            whose decoder has a final norm (``norm`` / ``final_layernorm`` / ``final_norm`` / ``ln_f``)
            and whose ``get_output_embeddings()`` is a linear LM head.

    Attributes:
        decoder (nn.Module): the module with ``.layers``.
        norm (nn.Module): the final norm.
        weight (torch.Tensor): ``[V, d]`` head weight; ``bias`` ``[V]`` or None.
        softcap (float | None): ``final_logit_softcapping`` (gemma), applied as the model does.

    Raises:
        TypeError: no decoder stack, no final norm, or no linear LM head; the message names the class.

    Example:
        >>> lens = LogitLens(model)                                   # doctest: +SKIP
        >>> logits = lens.logits(hidden_of_layer_3)                   # doctest: +SKIP
    """

    def __init__(self, model: nn.Module):
        arch = type(model).__name__
        self.decoder = find_decoder(model)
        self.layers = self.decoder.layers
        self.num_layers = len(self.layers)
        norm = None
        for name in _NORM_NAMES:
            cand = getattr(self.decoder, name, None)
            if isinstance(cand, nn.Module):
                norm = cand
                break
        if norm is None:
            raise TypeError(f"cannot find the final norm of {arch} (looked for decoder attributes "
                            f"{', '.join(_NORM_NAMES)}); the logit-lens signals need a standard final norm + lm_head")
        self.norm = norm
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None:
            head = getattr(model, "lm_head", None)
        if not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
            raise TypeError(f"cannot find a linear LM head on {arch} (get_output_embeddings() / lm_head); "
                            "pass the *ForCausalLM model, not its base model")
        self.weight = head.weight
        self.bias = getattr(head, "bias", None)
        self.softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        self.vocab_size = int(self.weight.shape[0])
        self.hidden_size = int(self.weight.shape[1])
        self.arch = arch

    def logits(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """float32 logits of already-normed states ``[P, d]`` over vocabulary rows ``[start, stop)``."""
        w = self.weight[start:stop]
        out = (hidden.to(w.dtype) @ w.T).float()
        if self.bias is not None:
            out = out + self.bias[start:stop].float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Per-position cross-entropy (nats, float64) of ``targets`` under the lens of ``hidden``.

        The final norm is applied here; the head runs ``chunk`` vocabulary rows at a time with a
        running log-sum-exp, so memory is ``P x chunk``, not ``P x V``.

        Args:
            hidden (torch.Tensor): ``[P, d]`` raw block outputs.
            targets (torch.Tensor): ``[P]`` token ids.
            chunk (int): vocabulary rows per matmul. Default 16384.

        Returns:
            torch.Tensor: ``[P]`` float64.
        """
        h = self.norm(hidden)
        p = h.shape[0]
        lse = torch.full((p,), -math.inf, dtype=torch.float64, device=h.device)
        tgt = torch.zeros(p, dtype=torch.float64, device=h.device)
        for s in range(0, self.vocab_size, chunk):
            e = min(s + chunk, self.vocab_size)
            lg = self.logits(h, s, e)
            lse = torch.logaddexp(lse, torch.logsumexp(lg, dim=-1).double())
            inside = (targets >= s) & (targets < e)
            if bool(inside.any()):
                rows = inside.nonzero().flatten()
                tgt[rows] = lg[rows, targets[rows] - s].double()
        return lse - tgt

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """float64 log-probabilities ``[B, V]`` of the lens of raw block outputs ``[B, d]``."""
        return torch.log_softmax(self.logits(self.norm(hidden)).double(), dim=-1)


# --------------------------------------------------------------------------------------------------
# vocabulary-space divergences


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = getattr(backend, "decoder", None)
    text = repr(dec) if dec is not None else ""
    if "ByteLevel" in text:
        return "bytelevel"
    if "Metaspace" in text or "▁" in text:
        return "sentencepiece"
    return "plain"


def token_texts(tokenizer: Any) -> list[str | None]:
    """The text each token id stands for (None for special tokens and partial UTF-8 bytes).

    Byte-level BPE tokens (GPT-2, Llama-3, Qwen, SmolLM) are mapped back through the byte alphabet
    (``"Ġhello"`` -> ``" hello"``); SentencePiece tokens have ``▁`` -> space and ``<0xNN>`` byte
    tokens -> their ASCII character; other tokenizers (word-level) keep the token string.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        list[str | None]: one entry per id in ``range(len(tokenizer))``.

    Example:
        >>> token_texts(tok)[tok.convert_tokens_to_ids("Ġhello")]     # doctest: +SKIP
        ' hello'
    """
    n = len(tokenizer)
    toks = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    kind = _decoder_kind(tokenizer)
    inv = _bytes_to_unicode() if kind == "bytelevel" else None
    out: list[str | None] = []
    for i, t in enumerate(toks):
        if t is None or i in special:
            out.append(None)
            continue
        if inv is not None:
            try:
                out.append(bytes(inv[c] for c in t).decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                out.append(None)    # a partial UTF-8 sequence, or not a byte-level token
        elif kind == "sentencepiece":
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                b = int(t[3:5], 16)
                out.append(chr(b) if b < 128 else None)
            else:
                out.append(t.replace("▁", " "))
        else:
            out.append(t)
    return out


@dataclass
class SharedVocabulary:
    """Token texts present in both tokenizers, and how each model's ids map onto them.

    Several ids of one tokenizer may stand for the same text (e.g. a SentencePiece byte token and a
    normal token); their probabilities are summed (the probability of that text).

    Attributes:
        texts (list[str]): the G shared token texts.
        cloud_ids, cloud_group, edge_ids, edge_group (torch.Tensor): id -> group index pairs.
    """

    texts: list[str]
    cloud_ids: torch.Tensor
    cloud_group: torch.Tensor
    edge_ids: torch.Tensor
    edge_group: torch.Tensor

    @classmethod
    def build(cls, cloud_tokenizer: Any, edge_tokenizer: Any) -> SharedVocabulary:
        """Intersect the token texts of two tokenizers (see :func:`token_texts`).

        Raises:
            ValueError: fewer than 2 shared texts (no distribution to compare).
        """
        ct, et = token_texts(cloud_tokenizer), token_texts(edge_tokenizer)
        shared = sorted({t for t in ct if t} & {t for t in et if t})
        if len(shared) < 2:
            raise ValueError(f"the two tokenizers share {len(shared)} token texts; 'vocab_kl' needs a shared "
                             "vocabulary (use 'uld', which needs none)")
        group = {t: g for g, t in enumerate(shared)}

        def pairs(texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
            ids = [i for i, t in enumerate(texts) if t in group]
            return torch.tensor(ids, dtype=torch.long), torch.tensor([group[texts[i]] for i in ids], dtype=torch.long)

        ci, cg = pairs(ct)
        ei, eg = pairs(et)
        return cls(shared, ci, cg, ei, eg)

    def project(self, probs: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, V]`` probabilities -> (renormalised ``[B, G]`` over the shared texts, shared mass ``[B]``)."""
        ids, grp = (self.cloud_ids, self.cloud_group) if side == "cloud" else (self.edge_ids, self.edge_group)
        ids, grp = ids.to(probs.device), grp.to(probs.device)
        out = torch.zeros(probs.shape[0], len(self.texts), dtype=probs.dtype, device=probs.device)
        out.index_add_(1, grp, probs[:, ids])
        mass = out.sum(1)
        return out / mass.clamp_min(1e-300).unsqueeze(1), mass


def shared_vocab_kl(p_cloud: torch.Tensor, p_edge: torch.Tensor) -> torch.Tensor:
    """``KL(p_cloud || p_edge)`` in nats of distributions over the same ``G`` items, ``[B, G]`` -> ``[B]``.

    Terms with ``p_cloud = 0`` contribute 0; ``p_edge = 0`` where ``p_cloud > 0`` gives inf.

    Example:
        >>> shared_vocab_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])).round(decimals=4)
        tensor([0.5108], dtype=torch.float64)
    """
    p, q = p_cloud.double(), p_edge.double()
    terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(0))), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


def uld_distance(p_cloud: torch.Tensor, p_edge: torch.Tensor) -> torch.Tensor:
    """ULD's sorted-probability distance (Boizard et al., 2024), ``[B, Vc]`` x ``[B, Ve]`` -> ``[B]``.

    ``sum_i |sort_desc(p_cloud)_i - sort_desc(p_edge)_i|``, the shorter vector padded with zeros.
    It lies in [0, 2] and needs no token correspondence.

    Example:
        >>> uld_distance(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.4, 0.6]]))
        tensor([0.4000], dtype=torch.float64)
    """
    a = torch.sort(p_cloud.double(), dim=-1, descending=True).values
    b = torch.sort(p_edge.double(), dim=-1, descending=True).values
    n = max(a.shape[-1], b.shape[-1])
    a = torch.nn.functional.pad(a, (0, n - a.shape[-1]))
    b = torch.nn.functional.pad(b, (0, n - b.shape[-1]))
    return (a - b).abs().sum(-1)


# --------------------------------------------------------------------------------------------------
# neighbourhood agreement


@dataclass
class KnnReference:
    """The fixed reference set of :func:`knn_agreement`: response meta tokens and sample ids.

    Attributes:
        cloud (np.ndarray): ``[R, L, dc]`` (mapped cloud layers).
        edge (np.ndarray): ``[R, L, de]``.
        sample_ids (tuple[str, ...]): R unique ids.
    """

    cloud: np.ndarray
    edge: np.ndarray
    sample_ids: tuple[str, ...]

    def __post_init__(self):
        self.cloud = np.asarray(self.cloud, dtype=np.float64)
        self.edge = np.asarray(self.edge, dtype=np.float64)
        self.sample_ids = tuple(str(s) for s in self.sample_ids)
        if self.cloud.ndim != 3 or self.edge.ndim != 3 or self.cloud.shape[:2] != self.edge.shape[:2]:
            raise ValueError(f"reference cloud/edge must be [R, L, d] with the same R and L, got "
                             f"{self.cloud.shape} and {self.edge.shape}")
        if len(self.sample_ids) != self.cloud.shape[0]:
            raise ValueError(f"{len(self.sample_ids)} reference ids for {self.cloud.shape[0]} reference vectors")
        if len(set(self.sample_ids)) != len(self.sample_ids):
            raise ValueError("reference sample ids must be unique")

    def self_index(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Index of each sample in the reference set, -1 where it is not a reference."""
        pos = {s: i for i, s in enumerate(self.sample_ids)}
        return np.array([pos.get(str(s), -1) for s in sample_ids], dtype=np.int64)


def _centred_unit(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    x = x - centre
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def knn_agreement(cloud: np.ndarray, edge: np.ndarray, reference: KnnReference, *, k: int = 10,
                  self_index: Sequence[int] | None = None) -> np.ndarray:
    """Per-layer mutual k-NN disagreement ``1 - |N_cloud ∩ N_edge| / k`` (Huh et al., 2024).

    For every layer j and sample, the k nearest references by cosine similarity after centring
    by the reference mean, separately in the cloud's and the edge's space; ties are broken by the
    lower reference index. A sample that is itself reference ``r`` (``self_index``) is scored exactly
    as if it had not been drawn: entry r is no candidate and the centre is the mean of the other R-1.

    Args:
        cloud (np.ndarray): ``[N, L, dc]`` response meta tokens (mapped cloud layers).
        edge (np.ndarray): ``[N, L, de]``.
        reference (KnnReference): the fixed reference set.
        k (int): neighbours, ``1 <= k <= R - 1``. Default 10.
        self_index (Sequence[int] | None): per sample, its index in the reference set or -1.
            Default None (no sample is a reference).

    Returns:
        np.ndarray: ``[N, L]`` float64 in ``[0, 1]``.

    Raises:
        ValueError: shapes that do not match the reference, or a bad k.

    Example:
        >>> ref = KnnReference(np.random.rand(20, 2, 5), np.random.rand(20, 2, 3), [str(i) for i in range(20)])
        >>> knn_agreement(np.random.rand(4, 2, 5), np.random.rand(4, 2, 3), ref, k=3).shape
        (4, 2)
    """
    c = np.asarray(cloud, dtype=np.float64)
    e = np.asarray(edge, dtype=np.float64)
    r = reference.cloud.shape[0]
    if c.ndim != 3 or e.ndim != 3 or c.shape[0] != e.shape[0]:
        raise ValueError(f"cloud and edge must be [N, L, d] with the same N, got {c.shape} and {e.shape}")
    if c.shape[1:] != reference.cloud.shape[1:] or e.shape[1:] != reference.edge.shape[1:]:
        raise ValueError(f"sample vectors {c.shape[1:]} / {e.shape[1:]} do not match the reference's "
                         f"{reference.cloud.shape[1:]} / {reference.edge.shape[1:]} ([L, d] per model)")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= r - 1:
        raise ValueError(f"knn k must be an int in [1, R-1] = [1, {r - 1}] (R = {r} references), got {k!r}")
    n, n_layers = c.shape[:2]
    si = np.full(n, -1, dtype=np.int64) if self_index is None else np.asarray(self_index, dtype=np.int64)
    if si.shape != (n,) or bool(((si < -1) | (si >= r)).any()):
        raise ValueError(f"self_index must be [N={n}] indices in [-1, {r})")
    rows = np.nonzero(si >= 0)[0]
    out = np.empty((n, n_layers), dtype=np.float64)
    for j in range(n_layers):
        neigh = []
        for q, ref in ((c[:, j], reference.cloud[:, j]), (e[:, j], reference.edge[:, j])):
            centre = ref.mean(0)
            sim = _centred_unit(q, centre) @ _centred_unit(ref, centre).T     # [N, R]
            for i in rows:      # a reference sample: centre and candidates are the other R-1 references
                others = np.delete(np.arange(r), si[i])
                c_i = ref[others].mean(0)
                sim[i] = _centred_unit(ref, c_i) @ _centred_unit(q[i], c_i)
            sim[rows, si[rows]] = -np.inf
            neigh.append(np.argsort(-sim, axis=1, kind="stable")[:, :k])
        for i in range(n):
            out[i, j] = 1.0 - len(np.intersect1d(neigh[0][i], neigh[1][i], assume_unique=True)) / k
    return out


# --------------------------------------------------------------------------------------------------
# tokenization and the forward pass


@dataclass
class _Tokenized:
    ids: list[int]
    n_prompt: int
    n_bytes: int
    truncated: int = 0


@dataclass
class _Pass:
    """What one model's forward pass over a batch keeps (all on the model's device)."""

    resp_h: dict[int, torch.Tensor] = field(default_factory=dict)     # layer -> [P, d] states predicting response tokens
    last_prompt_h: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, d]
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)     # layer -> [B, d] float32
    targets: torch.Tensor | None = None                               # [P]
    row_of: torch.Tensor | None = None                                # [P]


def _sample_parts(item: Any, i: int) -> tuple[str, str, bool]:
    """(prompt text, response, add_special_tokens) of one sample."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], str):
        prompt, response = item
    else:
        raise ValueError(f"sample {i}: expected a (prompt, response) pair, got {type(item).__name__}")
    try:
        text, _system = prompt_parts(prompt)
    except TypeError as e:
        raise ValueError(f"sample {i}: {e}") from None
    if not response.strip():
        raise ValueError(f"sample {i}: the response is empty")
    return text, response.strip(), bool(getattr(prompt, "add_special_tokens", True))


class CrossModelSignals:
    """Response-conditioned cross-model signals of a cloud/edge pair (see the module docstring).

    Args:
        cloud (nn.Module): the cloud causal LM. cloud_tokenizer: its tokenizer.
        edge (nn.Module): the edge causal LM. edge_tokenizer: its tokenizer.
        layer_map (Sequence[int] | None): cloud layer of each edge layer; None = the default
            relative-depth map.
        pooling (str): ``mean`` (over the response tokens; default) or ``last`` (the response's last
            token), for ``response`` and ``knn_agreement``.
        turn_prefix (str | None): text between prompt and response, conditioned on but not scored.
            None = ``"\\nYou:"`` after a plain prompt (the layout of ``format_prompt``), ``""`` after a
            chat-template prompt (``Prompt.add_special_tokens`` False; the template ends with the
            assistant header).
        max_length (int): token budget per sample and model. Default 512.
        truncation (str): ``error`` (default) or ``left`` (drop the oldest prompt tokens after the
            first one; the response is never cut).
        batch_size (int): samples per forward pass (length-bucketed). Default 8.
        vocab_chunk (int): LM-head rows per matmul. Default 16384.
        knn_k (int): k of ``knn_agreement``. Default 10.

    Raises:
        TypeError: a model without a recognisable decoder, final norm or LM head (named).
        ValueError: bad arguments or layer map.

    Example:
        >>> sig = CrossModelSignals(cloud, cloud_tok, edge, edge_tok)                 # doctest: +SKIP
        >>> ref = sig.reference(ref_pairs, ref_ids)                                   # doctest: +SKIP
        >>> out = sig.compute(pairs, SIGNALS, reference=ref, sample_ids=ids)          # doctest: +SKIP
    """

    def __init__(self, cloud: nn.Module, cloud_tokenizer: Any, edge: nn.Module, edge_tokenizer: Any, *,
                 layer_map: Sequence[int] | None = None, pooling: str = "mean", turn_prefix: str | None = None,
                 max_length: int = 512, truncation: str = "error", batch_size: int = 8,
                 vocab_chunk: int = 16384, knn_k: int = 10):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} for response-conditioned signals, "
                             f"got {pooling!r}")
        if truncation not in ("error", "left"):
            raise ValueError(f"truncation must be 'error' or 'left', got {truncation!r}")
        for name, v, lo in (("max_length", max_length, 4), ("batch_size", batch_size, 1),
                            ("vocab_chunk", vocab_chunk, 1), ("knn_k", knn_k, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.cloud, self.edge = cloud, edge
        self.tokenizers = {"cloud": cloud_tokenizer, "edge": edge_tokenizer}
        self.lens = {"cloud": LogitLens(cloud), "edge": LogitLens(edge)}
        self.num_layers = self.lens["edge"].num_layers
        self.layer_map = resolve_layer_map(layer_map, self.num_layers, self.lens["cloud"].num_layers)
        self.pooling = pooling
        self.turn_prefix = turn_prefix
        self.max_length = max_length
        self.truncation = truncation
        self.batch_size = batch_size
        self.vocab_chunk = vocab_chunk
        self.knn_k = knn_k
        self._shared: SharedVocabulary | None = None
        self.last_timings: dict[str, float] = {}

    # ------------------------------------------------------------------ provenance
    def describe(self) -> dict[str, Any]:
        """JSON-able settings for provenance."""
        return {"pooling": self.pooling, "layer_map": list(self.layer_map), "turn_prefix": self.turn_prefix,
                "max_length": self.max_length, "truncation": self.truncation, "vocab_chunk": self.vocab_chunk,
                "knn_k": self.knn_k, "bpb_unit": "bits per UTF-8 byte of the scored response text",
                "layer_output": "raw decoder block output; the logit lens applies the model's own final norm + head",
                "cloud_arch": self.lens["cloud"].arch, "edge_arch": self.lens["edge"].arch}

    @property
    def shared_vocabulary(self) -> SharedVocabulary:
        """The shared token texts of the two tokenizers (built on first use)."""
        if self._shared is None:
            self._shared = SharedVocabulary.build(self.tokenizers["cloud"], self.tokenizers["edge"])
        return self._shared

    # ------------------------------------------------------------------ tokenization
    def _prefix(self, add_special: bool) -> str:
        if self.turn_prefix is not None:
            return self.turn_prefix
        return "\nYou:" if add_special else ""

    def scored_text(self, prompt: Any, response: str) -> str:
        """The text whose bytes the bpb signals divide by: the response, after a space if the turn
        prefix ends in a non-space character."""
        prefix = self._prefix(bool(getattr(prompt, "add_special_tokens", True)))
        return (" " if prefix and not prefix[-1].isspace() else "") + response.strip()

    def tokenize(self, side: str, samples: Sequence[Any]) -> list[_Tokenized]:
        """Token ids, prompt length and scored-text byte count of every sample, for one model.

        Raises:
            ValueError: a malformed sample, an empty prompt, or one too long (``truncation="error"``),
                named by its index.
        """
        tok = self.tokenizers[side]
        out = []
        for i, item in enumerate(samples):
            text, response, add_special = _sample_parts(item, i)
            prefix = self._prefix(add_special)
            scored = (" " if prefix and not prefix[-1].isspace() else "") + response
            p_ids = list(tok(text + prefix, add_special_tokens=add_special)["input_ids"])
            r_ids = list(tok(scored, add_special_tokens=False)["input_ids"])
            if not p_ids:
                raise SampleError(f"sample {i}: the prompt has no tokens under the {side} tokenizer; "
                                  "a response token needs a predecessor")
            if not r_ids:
                raise SampleError(f"sample {i}: the response has no tokens under the {side} tokenizer")
            dropped = 0
            total = len(p_ids) + len(r_ids)
            if total > self.max_length:
                if self.truncation == "error":
                    raise SampleError(f"sample {i}: {total} {side} tokens (prompt {len(p_ids)} + response "
                                      f"{len(r_ids)}) > max_length={self.max_length}; raise max_length or "
                                      "use truncation='left'")
                room = self.max_length - len(r_ids)
                if room < 2:
                    raise SampleError(
                        f"sample {i}: the response alone is {len(r_ids)} {side} tokens, which leaves no room for "
                        f"the prompt within max_length={self.max_length}; raise max_length (the response is "
                        "never cut)")
                dropped = len(p_ids) - room
                p_ids = p_ids[:1] + p_ids[1 + dropped:]
            out.append(_Tokenized(p_ids + r_ids, len(p_ids), len(scored.encode("utf-8")), dropped))
        return out

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def _forward(self, side: str, toks: list[_Tokenized], rows: list[int], *, lens_layers: set[int],
                 last_layers: set[int], pool_layers: set[int]) -> _Pass:
        lens = self.lens[side]
        dev = lens.weight.device
        tok = self.tokenizers[side]
        pad = getattr(tok, "pad_token_id", None)
        pad = pad if pad is not None else (getattr(tok, "eos_token_id", None) or 0)
        b = len(rows)
        width = max(len(toks[i].ids) for i in rows)
        ids = torch.full((b, width), int(pad), dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        resp = torch.zeros(b, width, dtype=torch.bool)      # positions holding a response token
        for r, i in enumerate(rows):
            t = toks[i]
            ids[r, :len(t.ids)] = torch.tensor(t.ids)
            mask[r, :len(t.ids)] = 1
            resp[r, t.n_prompt:len(t.ids)] = True
        pred = torch.zeros_like(resp)                        # positions predicting a response token
        pred[:, :-1] = resp[:, 1:]
        last_prompt = torch.tensor([toks[i].n_prompt - 1 for i in rows])
        last_resp = torch.tensor([len(toks[i].ids) - 1 for i in rows])
        ids, mask, resp, pred = ids.to(dev), mask.to(dev), resp.to(dev), pred.to(dev)
        last_prompt, last_resp = last_prompt.to(dev), last_resp.to(dev)
        ar = torch.arange(b, device=dev)
        out = _Pass(targets=ids[resp], row_of=resp.nonzero()[:, 0])
        counts = resp.sum(1, keepdim=True).float()
        wanted = lens_layers | last_layers | pool_layers

        def make_hook(i: int):
            def hook(_module, _args, output):
                h = output[0] if isinstance(output, tuple) else output
                if i in lens_layers:
                    out.resp_h[i] = h[pred]
                if i in last_layers:
                    out.last_prompt_h[i] = h[ar, last_prompt]
                if i in pool_layers:
                    if self.pooling == "mean":
                        out.pooled[i] = h.masked_fill(~resp.unsqueeze(-1), 0).sum(1, dtype=torch.float32) / counts
                    else:
                        out.pooled[i] = h[ar, last_resp].float()
            return hook

        handles = [lens.layers[i].register_forward_hook(make_hook(i)) for i in sorted(wanted)]
        try:
            lens.decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0),
                         use_cache=False)
        finally:
            for hd in handles:
                hd.remove()
        return out

    # ------------------------------------------------------------------ public
    def reference(self, samples: Sequence[Any], sample_ids: Sequence[str]) -> KnnReference:
        """The response meta tokens of a fixed reference set, for ``knn_agreement``.

        Args:
            samples (Sequence): ``(prompt, response)`` pairs of the reference samples.
            sample_ids (Sequence[str]): their unique ids (a scored sample with one of these ids never
                counts as its own neighbour).

        Returns:
            KnnReference

        Raises:
            ValueError: fewer than 2 references, ids that are not unique or do not match in number.
        """
        if len(sample_ids) != len(samples):
            raise ValueError(f"{len(sample_ids)} sample ids for {len(samples)} reference samples")
        if len(samples) < 2:
            raise ValueError("a k-NN reference set needs at least 2 samples")
        out = self.compute(samples, ["response"])
        return KnnReference(out["response_cloud"], out["response_edge"], tuple(sample_ids))

    def compute(self, samples: Sequence[Any], signals: Sequence[str] | str = ("logit_lens_gap",), *,
                reference: KnnReference | None = None, sample_ids: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
        """The requested signals of every sample, from one forward pass per model per batch.

        Args:
            samples (Sequence): ``(prompt, response)`` pairs; a prompt is a str, a ``(text,
                system_text)`` pair or a :class:`torch_curriculum.data.Prompt`.
            signals (Sequence[str] | str): names from :data:`SIGNALS`. Default ``("logit_lens_gap",)``.
            reference (KnnReference | None): required for ``knn_agreement``.
            sample_ids (Sequence[str] | None): required for ``knn_agreement`` (self-exclusion).

        Returns:
            dict[str, np.ndarray]: float64 arrays in sample order: ``[B, L]`` per signal
            (``logit_lens_gap`` also adds ``edge_bpb`` and ``cloud_bpb``; ``vocab_kl`` adds
            ``vocab_shared_mass_cloud`` / ``_edge``), ``response_cloud`` ``[B, L, dc]`` and
            ``response_edge`` ``[B, L, de]`` for ``response``, and always ``response_bytes`` ``[B]``.

        Raises:
            ValueError: unknown signal names, malformed samples, a missing reference or ids for
                ``knn_agreement``.
        """
        names = [signals] if isinstance(signals, str) else list(signals)
        bad = [s for s in names if s not in SIGNALS]
        if bad or not names:
            raise ValueError(f"unknown signal(s) {bad}; expected some of {', '.join(SIGNALS)}")
        want = set(names)
        if "knn_agreement" in want:
            if reference is None or sample_ids is None:
                raise ValueError("'knn_agreement' needs reference= (CrossModelSignals.reference) and sample_ids= "
                                 "(so that a reference sample is never its own neighbour)")
            if len(sample_ids) != len(samples):
                raise ValueError(f"{len(sample_ids)} sample ids for {len(samples)} samples")
        if len(samples) == 0:
            raise ValueError("no samples")
        n, L = len(samples), self.num_layers
        cloud_layers = sorted(set(self.layer_map))
        all_edge = set(range(L))
        need_cloud = bool(want - {"edge_bpb"})
        plan = {
            "edge": dict(lens_layers=all_edge if want & {"logit_lens_gap", "edge_bpb"} else set(),
                         last_layers=all_edge if want & {"vocab_kl", "uld"} else set(),
                         pool_layers=all_edge if want & {"response", "knn_agreement"} else set()),
            "cloud": dict(lens_layers=set(cloud_layers) if "logit_lens_gap" in want else set(),
                          last_layers=set(cloud_layers) if want & {"vocab_kl", "uld"} else set(),
                          pool_layers=set(cloud_layers) if want & {"response", "knn_agreement"} else set()),
        }
        sides = ["cloud", "edge"] if need_cloud else ["edge"]
        toks = {s: self.tokenize(s, samples) for s in sides}
        nbytes = np.array([t.n_bytes for t in toks["edge"]], dtype=np.float64)
        res: dict[str, np.ndarray] = {"response_bytes": nbytes}
        bpb = {s: np.full((n, self.lens[s].num_layers), np.nan) for s in sides}
        pooled = {"cloud": None, "edge": None}
        div: dict[str, np.ndarray] = {k: np.full((n, L), np.nan) for k in
                                      ("vocab_kl", "uld", "vocab_shared_mass_cloud", "vocab_shared_mass_edge")}
        timings = {k: 0.0 for k in ("forward_cloud", "forward_edge", "lens_bpb", "vocab", "knn")}
        # one bucketing for both models (by edge length) so a batch's two passes cover the same samples
        order = sorted(range(n), key=lambda i: (-len(toks["edge"][i].ids), i))
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            passes = {}
            for s in sides:
                t0 = time.perf_counter()
                passes[s] = self._forward(s, toks[s], rows, **plan[s])
                timings[f"forward_{s}"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.inference_mode():
                for s in sides:
                    ps = passes[s]
                    for i, h in ps.resp_h.items():
                        ce = self.lens[s].cross_entropy(h, ps.targets, self.vocab_chunk)
                        tot = torch.zeros(len(rows), dtype=torch.float64, device=ce.device).index_add_(0, ps.row_of, ce)
                        bpb[s][rows, i] = tot.cpu().numpy() / (nbytes[rows] * _LN2)
                    if ps.pooled:
                        if pooled[s] is None:
                            d = next(iter(ps.pooled.values())).shape[1]
                            pooled[s] = np.zeros((n, self.lens[s].num_layers, d), dtype=np.float64)
                        for i, v in ps.pooled.items():
                            pooled[s][rows, i] = v.double().cpu().numpy()
            timings["lens_bpb"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if want & {"vocab_kl", "uld"}:
                self._divergences(passes, rows, want, div)
            timings["vocab"] += time.perf_counter() - t0
        emap = np.asarray(self.layer_map)
        if want & {"logit_lens_gap", "edge_bpb"}:
            res["edge_bpb"] = bpb["edge"]
        if "logit_lens_gap" in want:
            res["cloud_bpb"] = bpb["cloud"][:, emap]
            res["logit_lens_gap"] = res["edge_bpb"] - res["cloud_bpb"]
        if "vocab_kl" in want:
            res["vocab_kl"] = div["vocab_kl"]
            res["vocab_shared_mass_cloud"] = div["vocab_shared_mass_cloud"]
            res["vocab_shared_mass_edge"] = div["vocab_shared_mass_edge"]
        if "uld" in want:
            res["uld"] = div["uld"]
        if want & {"response", "knn_agreement"}:
            rc, re_ = pooled["cloud"][:, emap], pooled["edge"]
            if "response" in want:
                res["response_cloud"], res["response_edge"] = rc, re_
            if "knn_agreement" in want:
                t0 = time.perf_counter()
                res["knn_agreement"] = knn_agreement(rc, re_, reference, k=self.knn_k,
                                                     self_index=reference.self_index(sample_ids))
                timings["knn"] += time.perf_counter() - t0
        self.last_timings = timings
        return res

    def _divergences(self, passes: dict[str, _Pass], rows: list[int], want: set[str],
                     div: dict[str, np.ndarray]) -> None:
        shared = self.shared_vocabulary if "vocab_kl" in want else None
        cache: tuple[int, torch.Tensor] | None = None
        with torch.inference_mode():
            for j, m in enumerate(self.layer_map):
                if cache is None or cache[0] != m:
                    cache = (m, self.lens["cloud"].log_probs(passes["cloud"].last_prompt_h[m]).exp())
                pc = cache[1]
                pe = self.lens["edge"].log_probs(passes["edge"].last_prompt_h[j]).exp()
                if "uld" in want:
                    div["uld"][rows, j] = uld_distance(pc, pe).cpu().numpy()
                if shared is not None:
                    qc, mc = shared.project(pc, "cloud")
                    qe, me = shared.project(pe, "edge")
                    div["vocab_kl"][rows, j] = shared_vocab_kl(qc, qe).cpu().numpy()
                    div["vocab_shared_mass_cloud"][rows, j] = mc.cpu().numpy()
                    div["vocab_shared_mass_edge"][rows, j] = me.cpu().numpy()


def compute_signals(cloud: tuple[nn.Module, Any], edge: tuple[nn.Module, Any], samples: Sequence[Any],
                    signals: Sequence[str] | str = ("logit_lens_gap",), *, reference: KnnReference | None = None,
                    sample_ids: Sequence[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
    """One-call form of :class:`CrossModelSignals`: ``{name: np.ndarray}`` for ``samples``.

    Args:
        cloud (tuple): ``(model, tokenizer)`` of the cloud LM.
        edge (tuple): ``(model, tokenizer)`` of the edge LM.
        samples (Sequence): ``(prompt, response)`` pairs.
        signals (Sequence[str] | str): names from :data:`SIGNALS`. Default ``("logit_lens_gap",)``.
        reference (KnnReference | None): for ``knn_agreement`` (see :meth:`CrossModelSignals.compute`).
            Default None.
        sample_ids (Sequence[str] | None): for ``knn_agreement`` (see :meth:`CrossModelSignals.compute`).
            Default None.
        **kwargs: :class:`CrossModelSignals` settings (``layer_map``, ``pooling``, ``batch_size`` ...).

    Returns:
        dict[str, np.ndarray]: see :meth:`CrossModelSignals.compute`.

    Example:
        >>> out = compute_signals((cloud, ctok), (edge, etok), pairs, ["logit_lens_gap", "uld"])  # doctest: +SKIP
    """
    return CrossModelSignals(cloud[0], cloud[1], edge[0], edge[1], **kwargs).compute(
        samples, signals, reference=reference, sample_ids=sample_ids)
