"""The LoRA-Gen style generator: meta tokens from cached cloud states ▶ routers ▶ per-sample LoRA.

Shapes used below: B batch, T edge tokens, T_c cloud tokens, d_c cloud width, L edge layers,
n experts, K kept experts, r rank, D meta-token width.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_path, atomic_write_text
from ._config import LoRAGenConfig

__all__ = ["LoRAGenOutput", "LoRAGenerator", "Routing", "edge_decoder_layers", "keep_topk_softmax"]

logger = logging.getLogger(__name__)

_FORMAT = "torch_curriculum.loragen/1"


def keep_topk_softmax(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KeepTop-K softmax: logits outside the top k are set to -inf, softmax over the rest.

    Args:
        logits (Tensor): ``[..., n]`` router logits.
        k (int): experts to keep, ``1 <= k <= n``.

    Returns:
        tuple: ``(dense [..., n], top_gates [..., k], top_idx [..., k])``; ``dense`` is exactly 0
        outside the kept experts and every row sums to 1.

    Raises:
        ValueError: k out of range.

    Example:
        >>> d, g, i = keep_topk_softmax(torch.tensor([[0.0, 2.0, 1.0]]), 2)
        >>> i.tolist(), round(float(d.sum()), 6)
        ([[1, 2]], 1.0)
    """
    n = logits.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    top_logits, top_idx = logits.topk(k, dim=-1)
    top_gates = torch.softmax(top_logits, dim=-1)
    dense = torch.zeros_like(logits).scatter(-1, top_idx, top_gates)
    return dense, top_gates, top_idx


def edge_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (``model.model.layers`` for llama/qwen2).

    Raises:
        ValueError: no ``layers`` list is found.
    """
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: expected "
                         "model.get_decoder().layers (a non-empty nn.ModuleList)")
    return layers


@dataclass
class Routing:
    """The router decisions for one batch (all tensors have a leading batch dimension B).

    Attributes:
        meta_tokens (Tensor): ``[B, L, D]`` the meta tokens t_i.
        logits (Tensor): ``[B, L, n]`` router logits after BatchNorm.
        gates (Tensor): ``[B, L, n]`` KeepTop-K softmax gates (0 outside the top K; rows sum to 1).
        top_gates (Tensor): ``[B, L, K]`` the kept gates.
        top_idx (Tensor): ``[B, L, K]`` the kept experts.
    """

    meta_tokens: torch.Tensor
    logits: torch.Tensor
    gates: torch.Tensor
    top_gates: torch.Tensor
    top_idx: torch.Tensor


@dataclass
class LoRAGenOutput:
    """What :meth:`LoRAGenerator.forward` returns.

    Attributes:
        loss (Tensor | None): ``lm_loss + balance_coef * balance_loss`` (None without labels).
        lm_loss (Tensor | None): token-weighted mean cross-entropy over the response tokens.
        balance_loss (Tensor): mean over layers of cv² of the per-expert importance.
        n_tokens (int): response tokens that entered the LM loss.
        per_sample_loss (Tensor | None): ``[B]`` detached mean CE per sample over its tokens.
        per_sample_tokens (Tensor | None): ``[B]`` tokens per sample.
        routing (Routing): the router decisions.
        logits (Tensor | None): ``[B, T, V]`` full logits when ``return_logits=True``.
    """

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    balance_loss: torch.Tensor
    n_tokens: int
    per_sample_loss: torch.Tensor | None
    per_sample_tokens: torch.Tensor | None
    routing: Routing
    logits: torch.Tensor | None = None


class ExpertBank(nn.Module):
    """n LoRA experts for one target module: ``A [n, d_in, r]``, ``B [n, r, d_out]`` (B starts at 0)."""

    def __init__(self, n: int, d_in: int, d_out: int, rank: int, std_a: float):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n, d_in, rank) * std_a)
        self.B = nn.Parameter(torch.zeros(n, rank, d_out))


class Router(nn.Module):
    """``BN(f2(SiLU(f1(t))))`` over n experts."""

    def __init__(self, dim: int, hidden: int, n_experts: int, momentum: float):
        super().__init__()
        self.f1 = nn.Linear(dim, hidden)
        self.f2 = nn.Linear(hidden, n_experts)
        self.bn = nn.BatchNorm1d(n_experts, momentum=momentum)

    def forward(self, t: torch.Tensor, batch_stats: bool) -> torch.Tensor:
        """Logits ``[B, n]``; ``batch_stats`` normalises with (and updates) batch statistics."""
        z = self.f2(F.silu(self.f1(t)))
        if batch_stats:
            self.bn.num_batches_tracked.add_(1)
        return F.batch_norm(z, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                            self.bn.bias, training=batch_stats, momentum=self.bn.momentum,
                            eps=self.bn.eps)


class GeneratorLayer(nn.Module):
    """Everything the generator holds for one edge layer: its query, router and experts."""

    def __init__(self, config: LoRAGenConfig, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        self.query = nn.Parameter(torch.randn(config.meta_dim) / math.sqrt(config.meta_dim))
        self.norm = nn.LayerNorm(config.meta_dim)
        self.router = Router(config.meta_dim, config.router_hidden, config.n_experts,
                             config.bn_momentum)
        self.experts = nn.ModuleDict({
            name: ExpertBank(config.n_experts, d_in, d_out, config.rank,
                             config.init_std_a if config.init_std_a else 1.0 / math.sqrt(d_in))
            for name, (d_in, d_out) in shapes.items()})


class LoRAGenerator(nn.Module):
    """A compact LoRA-Gen generator that writes a per-sample LoRA into a frozen edge LM.

    L learnable queries (one per edge layer) cross-attend over the cached, frozen cloud states of
    the system prompt + persona and give the meta tokens t_i; the router of layer i,
    ``BN(f2(SiLU(f1(t_i))))``, picks K of n experts by KeepTop-K softmax; the LoRA of layer i and
    target module m is ``scaling * sum_e g_e B_e A_e``, added to the output of
    ``model.layers[i].mlp.<m>`` by a forward hook, per sample and batched. Only generator
    parameters are trainable; the edge model is frozen, put in eval mode and NOT registered as a
    submodule (so ``parameters()``, ``state_dict()`` and regex-based freezing see only the
    generator). Per-layer parameters are named ``layers.<i>.…``
    (e.g. ``layers.3.router.f1.weight``, ``layers.3.experts.gate_proj.A``); the shared
    cross-attention projections are ``cloud_norm.*`` and ``cloud_kv.*``.

    The router's BatchNorm uses batch statistics in training (and updates its running statistics)
    and running statistics in eval mode, for a batch of one, and for layers whose router is frozen
    (``requires_grad=False``), so a frozen layer's whole state stays fixed.

    Generator parameters are created on the edge model's device (move the edge model first);
    cloud states are moved to that device when routed.

    Args:
        edge_model (nn.Module): a Hugging Face causal LM (llama, qwen2, …) with
            ``get_decoder().layers[i].mlp.<target>`` linear layers.
        cloud_hidden_size (int): width d_c of the cached cloud states.
        config (LoRAGenConfig | None): hyper-parameters; None means the defaults.

    Raises:
        ValueError: a target module is missing or is not linear.

    Example:
        >>> gen = LoRAGenerator(edge, cloud_hidden_size=896)            # doctest: +SKIP
        >>> out = gen(input_ids, attention_mask, cloud_states, cloud_mask, labels)  # doctest: +SKIP
        >>> out.loss.backward()                                         # doctest: +SKIP
    """

    def __init__(self, edge_model: nn.Module, cloud_hidden_size: int,
                 config: LoRAGenConfig | None = None):
        super().__init__()
        config = config if config is not None else LoRAGenConfig()
        if not isinstance(config, LoRAGenConfig):
            raise TypeError(f"config must be a LoRAGenConfig, got {type(config).__name__}")
        if isinstance(cloud_hidden_size, bool) or not isinstance(cloud_hidden_size, int) \
                or cloud_hidden_size < 1:
            raise ValueError(f"cloud_hidden_size must be a positive int, got {cloud_hidden_size!r}")
        self.config = config
        self.cloud_hidden_size = cloud_hidden_size
        edge_layers = edge_decoder_layers(edge_model)
        targets: list[list[nn.Module]] = []
        shapes: dict[str, tuple[int, int]] = {}
        for i, block in enumerate(edge_layers):
            mlp = getattr(block, "mlp", None)
            row = []
            for name in config.target_modules:
                mod = getattr(mlp, name, None) if mlp is not None else None
                weight = getattr(mod, "weight", None)
                if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                    have = [n for n, _ in mlp.named_children()] if mlp is not None else []
                    raise ValueError(
                        f"edge layer {i}: target module 'mlp.{name}' is missing or not linear "
                        f"(config.target_modules={config.target_modules}; mlp has {have})")
                d_out, d_in = weight.shape
                if shapes.setdefault(name, (d_in, d_out)) != (d_in, d_out):
                    raise ValueError(f"edge layer {i}: mlp.{name} has shape {tuple(weight.shape)}, "
                                     f"layer 0 has {shapes[name][::-1]}; layers must agree")
                row.append(mod)
            targets.append(row)
        self.num_layers = len(edge_layers)
        self.target_shapes = shapes
        ref = next(edge_model.parameters())
        factory = {"device": ref.device}
        self.cloud_norm = nn.LayerNorm(cloud_hidden_size, **factory)
        self.cloud_kv = nn.Linear(cloud_hidden_size, 2 * config.meta_dim, **factory)
        self.layers = nn.ModuleList(GeneratorLayer(config, shapes) for _ in range(self.num_layers))
        self.layers.to(ref.device)
        self.dropout = nn.Dropout(config.dropout)

        # The edge model lives outside the module tree (see the class docstring).
        edge_model.requires_grad_(False)
        edge_model.eval()
        object.__setattr__(self, "edge_model", edge_model)
        self._targets = targets
        self._active: Routing | None = None
        self._last_routing: Routing | None = None
        self._merged_backup: dict[tuple[int, str], torch.Tensor] | None = None
        self._handles = [mod.register_forward_hook(self._make_hook(i, name))
                         for i, row in enumerate(targets)
                         for name, mod in zip(config.target_modules, row)]

    # ------------------------------------------------------------------ routing
    def route(self, cloud_states: torch.Tensor, cloud_mask: torch.Tensor | None = None) -> Routing:
        """Meta tokens and KeepTop-K gates for a batch of cloud states.

        Args:
            cloud_states (Tensor): ``[B, T_c, d_c]`` cached cloud states (padded).
            cloud_mask (Tensor | None): ``[B, T_c]``, 1/True on real tokens; None means all real.

        Returns:
            Routing: meta tokens, logits, dense gates, kept gates and expert indices.

        Raises:
            ValueError: wrong shapes, or a sample with no real cloud token.
        """
        if cloud_states.dim() == 2:
            cloud_states = cloud_states.unsqueeze(0)
            cloud_mask = None if cloud_mask is None else cloud_mask.reshape(1, -1)
        if cloud_states.dim() != 3 or cloud_states.shape[-1] != self.cloud_hidden_size:
            raise ValueError(f"cloud_states must be [B, T_c, {self.cloud_hidden_size}], got "
                             f"{tuple(cloud_states.shape)}")
        bsz, t_c, _ = cloud_states.shape
        param = self.cloud_kv.weight
        cloud_states = cloud_states.to(device=param.device, dtype=param.dtype)
        if cloud_mask is None:
            cloud_mask = torch.ones(bsz, t_c, dtype=torch.bool, device=param.device)
        cloud_mask = cloud_mask.to(device=param.device).bool()
        if cloud_mask.shape != (bsz, t_c):
            raise ValueError(f"cloud_mask must be [{bsz}, {t_c}], got {tuple(cloud_mask.shape)}")
        empty = (~cloud_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"cloud_mask has no real token for batch rows {empty}")
        cfg = self.config
        h, dh = cfg.num_query_heads, cfg.meta_dim // cfg.num_query_heads
        kv = self.cloud_kv(self.cloud_norm(cloud_states))
        k, v = kv.view(bsz, t_c, 2, h, dh).permute(2, 0, 3, 1, 4)          # [B, H, T_c, dh] each
        q = torch.stack([layer.query for layer in self.layers])            # [L, D]
        q = q.view(self.num_layers, h, dh).transpose(0, 1)                 # [H, L, dh]
        scores = torch.einsum("hld,bhtd->bhlt", q, k) / math.sqrt(dh)
        scores = scores.masked_fill(~cloud_mask[:, None, None, :], float("-inf"))
        attn = torch.einsum("bhlt,bhtd->bhld", scores.softmax(-1), v)      # [B, H, L, dh]
        attn = attn.permute(0, 2, 1, 3).reshape(bsz, self.num_layers, cfg.meta_dim)
        metas, logits = [], []
        for i, layer in enumerate(self.layers):
            t = layer.norm(self.dropout(attn[:, i] + layer.query))
            frozen = not any(p.requires_grad for p in layer.router.parameters())
            metas.append(t)
            logits.append(layer.router(t, batch_stats=self.training and bsz > 1 and not frozen))
        meta_tokens = torch.stack(metas, dim=1)
        logits_t = torch.stack(logits, dim=1)                              # [B, L, n]
        gates, top_gates, top_idx = keep_topk_softmax(logits_t, cfg.top_k)
        return Routing(meta_tokens, logits_t, gates, top_gates, top_idx)

    def balance_loss(self, gates: torch.Tensor) -> torch.Tensor:
        """cv² load-balancing loss: per layer, cv² of the per-expert importance (gates summed over
        the batch), averaged over layers; cv² = var / mean² with the unbiased variance (as in
        Shazeer et al. 2017).

        Args:
            gates (Tensor): ``[B, L, n]`` dense gates.

        Returns:
            Tensor: scalar.
        """
        importance = gates.float().sum(dim=0)                              # [L, n]
        if importance.shape[-1] < 2:
            return importance.new_zeros(())
        cv2 = importance.var(dim=-1) / (importance.mean(dim=-1) ** 2 + 1e-10)
        return cv2.mean()

    # ------------------------------------------------------------------ LoRA application
    def _make_hook(self, layer: int, name: str):
        # A closure (not a bound method) so deepcopy of the edge model never copies the generator.
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            routing = self._active
            if routing is None:
                return None
            return output + self._delta(layer, name, args[0], routing)
        return hook

    def _delta(self, layer: int, name: str, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """``scaling * sum_k g_k x A_k B_k`` for the K kept experts of every sample, batched."""
        bank = self.layers[layer].experts[name]
        idx = routing.top_idx[:, layer]                                    # [B, K]
        gates = routing.top_gates[:, layer] * self.config.scaling          # [B, K]
        bsz, k = idx.shape
        if x.shape[0] != bsz:
            raise RuntimeError(f"edge input batch {x.shape[0]} != routed batch {bsz}")
        r, n = self.config.rank, self.config.n_experts
        # Gather the kept experts with a one-hot matmul: its backward is a small matmul, while the
        # backward of advanced indexing (index_put with accumulate) costs ~10% of a CPU step.
        onehot = F.one_hot(idx.reshape(-1), n).to(bank.A.dtype)            # [B K, n]
        a = (onehot @ bank.A.reshape(n, -1)).view(bsz, k, -1, r)
        a = a.permute(0, 2, 1, 3).reshape(bsz, -1, k * r)                  # [B, d_in, K r]
        b = (onehot @ bank.B.reshape(n, -1)).view(bsz, k * r, -1)          # [B, K r, d_out]
        h = torch.bmm(x.reshape(bsz, -1, x.shape[-1]).to(a.dtype), a)     # [B, T, K r]
        h = h * gates.repeat_interleave(r, dim=1).to(h.dtype)[:, None, :]
        out = torch.bmm(h, b)
        return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)

    @contextmanager
    def _applied(self, routing: Routing) -> Iterator[None]:
        if self._merged_backup is not None:
            raise RuntimeError("the edge model holds a merged LoRA (merge(inplace=True)); call "
                               "unmerge() before running the generator")
        self._active = routing
        try:
            yield
        finally:
            self._active = None

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                cloud_states: torch.Tensor, cloud_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, *, return_logits: bool = False
                ) -> LoRAGenOutput:
        """Run the edge model with the generated per-sample LoRA.

        Position ids come from the attention mask, so left and right padding give the same
        result. Only the response positions (labels != -100) go through the LM head unless
        ``return_logits``.

        Args:
            input_ids (Tensor): ``[B, T]`` edge token ids.
            attention_mask (Tensor | None): ``[B, T]``; None means no padding.
            cloud_states (Tensor): ``[B, T_c, d_c]``.
            cloud_mask (Tensor | None): ``[B, T_c]``.
            labels (Tensor | None): ``[B, T]`` with -100 outside the response; token t predicts
                labels[t + 1] (HF convention, shifted inside).
            return_logits (bool): also return the full ``[B, T, V]`` logits. Default False.

        Returns:
            LoRAGenOutput: losses, per-sample losses, routing and optional logits.

        Raises:
            ValueError: shapes disagree, or labels mark no token.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
        bsz = input_ids.shape[0]
        if cloud_states.shape[0] != bsz:
            raise ValueError(f"cloud_states has batch {cloud_states.shape[0]}, input_ids {bsz}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        routing = self.route(cloud_states, cloud_mask)
        self._last_routing = Routing(*(t.detach() for t in (
            routing.meta_tokens, routing.logits, routing.gates, routing.top_gates,
            routing.top_idx)))
        edge = self.edge_model
        with self._applied(routing):
            hidden = edge.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False
                                        ).last_hidden_state
        head = edge.get_output_embeddings()
        balance = self.balance_loss(routing.gates)
        out = LoRAGenOutput(None, None, balance, 0, None, None, routing,
                            head(hidden) if return_logits else None)
        if labels is None:
            return out
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} != input_ids {tuple(input_ids.shape)}")
        target = labels[:, 1:]
        sel = target != -100
        n_tokens = int(sel.sum())
        if n_tokens == 0:
            raise ValueError("labels mark no response token in this batch (all -100)")
        logits = head(hidden[:, :-1][sel]).float()                         # [N, V]
        ce = F.cross_entropy(logits, target[sel], reduction="none")
        lm_loss = ce.sum() / n_tokens
        rows = sel.nonzero()[:, 0]
        per_tokens = sel.sum(dim=1)
        per_sum = torch.zeros(bsz, device=ce.device).index_add_(0, rows, ce.detach())
        out.lm_loss = lm_loss
        out.loss = lm_loss + self.config.balance_coef * balance
        out.n_tokens = n_tokens
        out.per_sample_tokens = per_tokens
        out.per_sample_loss = per_sum / per_tokens.clamp(min=1)
        return out

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def _delta_weights(self, routing: Routing, row: int = 0) -> dict[tuple[int, str], torch.Tensor]:
        """Materialised ``[d_out, d_in]`` updates for one routed sample."""
        out = {}
        for i, layer in enumerate(self.layers):
            g = routing.top_gates[row, i] * self.config.scaling                # [K]
            idx = routing.top_idx[row, i]
            for name, bank in layer.experts.items():
                out[(i, name)] = torch.einsum("k,kir,kro->oi", g, bank.A[idx], bank.B[idx])
        return out

    @torch.no_grad()
    def merge(self, cloud_states: torch.Tensor, cloud_mask: torch.Tensor | None = None, *,
              inplace: bool = False) -> nn.Module:
        """Fold one sample's generated LoRA into the edge weights, for plain inference.

        Routing uses the router's running BatchNorm statistics (eval behaviour), so the merged
        model equals the generator path in eval mode.

        Args:
            cloud_states (Tensor): ``[T_c, d_c]`` or ``[1, T_c, d_c]`` for ONE sample.
            cloud_mask (Tensor | None): ``[T_c]`` or ``[1, T_c]``.
            inplace (bool): False (default) returns a deep copy of the edge model with merged
                weights and no generator hooks; True edits the edge model itself (undo with
                :meth:`unmerge`) and returns it.

        Returns:
            nn.Module: the merged edge model.

        Raises:
            ValueError: more than one sample given.
            RuntimeError: ``inplace`` while already merged.
        """
        if cloud_states.dim() == 3 and cloud_states.shape[0] != 1:
            raise ValueError(f"merge takes one sample, got a batch of {cloud_states.shape[0]}")
        was_training = self.training
        self.eval()
        try:
            routing = self.route(cloud_states, cloud_mask)
        finally:
            self.train(was_training)
        deltas = self._delta_weights(routing)
        if inplace:
            if self._merged_backup is not None:
                raise RuntimeError("already merged in place; call unmerge() first")
            self._merged_backup = {}
            target_modules = self._targets
            model = self.edge_model
        else:
            model = copy.deepcopy(self.edge_model)
            ids = {h.id for h in self._handles}
            copied_layers = edge_decoder_layers(model)
            target_modules = [[getattr(copied_layers[i].mlp, name)
                               for name in self.config.target_modules]
                              for i in range(self.num_layers)]
            for mod in model.modules():
                for hid in ids & set(mod._forward_hooks):
                    del mod._forward_hooks[hid]
        for i, row in enumerate(target_modules):
            for name, mod in zip(self.config.target_modules, row):
                if inplace:
                    self._merged_backup[(i, name)] = mod.weight.detach().clone()
                mod.weight.add_(deltas[(i, name)].to(mod.weight.dtype))
        return model

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the edge weights saved by ``merge(inplace=True)`` exactly (bit for bit).

        Raises:
            RuntimeError: nothing is merged.
        """
        if self._merged_backup is None:
            raise RuntimeError("nothing is merged in place")
        for i, row in enumerate(self._targets):
            for name, mod in zip(self.config.target_modules, row):
                mod.weight.copy_(self._merged_backup[(i, name)])
        self._merged_backup = None

    def remove_hooks(self) -> None:
        """Detach the generator from the edge model (it cannot run afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ introspection
    def layer_parameters(self, layer: int) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of one generator layer (names start with ``layers.<layer>.``)."""
        prefix = f"layers.{layer}."
        return [(n, p) for n, p in self.named_parameters() if n.startswith(prefix)]

    def trainable_layers(self) -> list[int]:
        """Layers with at least one parameter that requires grad."""
        return [i for i, layer in enumerate(self.layers)
                if any(p.requires_grad for p in layer.parameters())]

    def set_trainable_layers(self, layers: list[int] | None) -> None:
        """Set ``requires_grad`` per generator layer (None: all); shared parameters stay trainable."""
        keep = set(range(self.num_layers)) if layers is None else set(layers)
        bad = keep - set(range(self.num_layers))
        if bad:
            raise ValueError(f"layers {sorted(bad)} out of range [0, {self.num_layers})")
        for i, layer in enumerate(self.layers):
            layer.requires_grad_(i in keep)

    @torch.no_grad()
    def layer_update_norms(self, routing: Routing | None = None, *,
                           per_module: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mean over the batch of the Frobenius norm of each layer's generated update.

        ``||scaling * sum_e g_e A_e B_e||_F² = scaling² gᵀ (G_A ∘ G_B) g`` with the Gram matrices
        ``G_A = Aᵀ A`` and ``G_B = B Bᵀ`` of the stacked experts (size ``n r × n r``) and g the gates
        repeated r times, so no ``d_in × d_out`` matrix is formed.

        Args:
            routing (Routing | None): routing to measure; None uses the last forward's.
            per_module (bool): return ``{module: Tensor[L]}`` instead of one ``Tensor[L]``
                (the norm over all target modules together).

        Returns:
            Tensor | dict: float32 ``[L]`` norms (or one per target module).

        Raises:
            RuntimeError: no forward has run yet and no routing is given.
        """
        routing = routing if routing is not None else self._last_routing
        if routing is None:
            raise RuntimeError("no routing yet: run a forward pass first or pass routing=")
        r, s = self.config.rank, self.config.scaling
        bsz = routing.gates.shape[0]
        sq = {name: torch.zeros(self.num_layers, bsz) for name in self.config.target_modules}
        for i, layer in enumerate(self.layers):
            g = routing.gates[:, i].float().repeat_interleave(r, dim=1)   # [B, n r]
            for name, bank in layer.experts.items():
                a = bank.A.detach().float().permute(1, 0, 2).reshape(bank.A.shape[1], -1)
                b = bank.B.detach().float().reshape(-1, bank.B.shape[-1])
                m = (a.T @ a) * (b @ b.T)
                sq[name][i] = (torch.einsum("bi,ij,bj->b", g.to(m.device), m, g.to(m.device))
                               .clamp(min=0) * (s * s)).cpu()
        if per_module:
            return {name: v.sqrt().mean(dim=1) for name, v in sq.items()}
        return torch.stack(list(sq.values())).sum(dim=0).sqrt().mean(dim=1)

    def layer_grad_norms(self) -> torch.Tensor:
        """Per layer, the L2 norm of all its parameters' gradients (0 where grads are None)."""
        out = torch.zeros(self.num_layers)
        for i, layer in enumerate(self.layers):
            grads = [p.grad.detach().float() for p in layer.parameters() if p.grad is not None]
            if grads:
                out[i] = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g) for g in grads])).cpu()
        return out

    def shared_grad_norm(self) -> float:
        """Gradient norm of the shared (not per-layer) parameters."""
        grads = [p.grad.detach().float() for n, p in self.named_parameters()
                 if not n.startswith("layers.") and p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])))

    # ------------------------------------------------------------------ checkpoints
    @staticmethod
    def _config_path(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def save(self, path: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write the generator's parameters and BatchNorm buffers to ``path`` (safetensors) and the
        config to ``<path>.json`` beside it.

        Args:
            path (str | Path): the ``.safetensors`` file.
            metadata (dict | None): extra JSON-serialisable provenance stored in the JSON file.

        Returns:
            Path: the JSON path.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:  # a crash mid-save leaves the previous checkpoint whole
            save_file(state, str(tmp), metadata={"format": _FORMAT})
        info = {"format": _FORMAT, "config": self.config.to_dict(),
                "cloud_hidden_size": self.cloud_hidden_size, "num_layers": self.num_layers,
                "target_shapes": {k: list(v) for k, v in self.target_shapes.items()},
                "edge_model_type": getattr(getattr(self.edge_model, "config", None),
                                           "model_type", None),
                "metadata": metadata or {}}
        cfg_path = self._config_path(path)
        atomic_write_text(cfg_path, json.dumps(info, indent=2))
        return cfg_path

    @classmethod
    def load(cls, path: str | Path, edge_model: nn.Module) -> LoRAGenerator:
        """Rebuild a generator saved by :meth:`save` on ``edge_model``.

        Raises:
            FileNotFoundError: the checkpoint or its JSON is missing.
            ValueError: the checkpoint does not fit ``edge_model`` (names the mismatch).
        """
        from safetensors.torch import load_file

        path = Path(path)
        cfg_path = cls._config_path(path)
        for p in (path, cfg_path):
            if not p.exists():
                raise FileNotFoundError(f"LoRA-Gen checkpoint file {p} does not exist")
        info = json.loads(cfg_path.read_text())
        if info.get("format") != _FORMAT:
            raise ValueError(f"{cfg_path}: format {info.get('format')!r}, expected {_FORMAT!r}")
        gen = cls(edge_model, int(info["cloud_hidden_size"]),
                  LoRAGenConfig.from_dict(info["config"]))
        if gen.num_layers != info["num_layers"]:
            raise ValueError(f"{path}: saved for {info['num_layers']} edge layers, the edge model "
                             f"has {gen.num_layers}")
        state = load_file(str(path), device=str(next(gen.parameters()).device))
        own = gen.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"{path}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, the generator "
                                 f"expects {tuple(own[k].shape)} (different edge model?)")
        gen.load_state_dict(state)
        return gen

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: ``total``, ``per_layer`` (one layer), ``shared``, ``experts``."""
        total = sum(p.numel() for p in self.parameters())
        per_layer = sum(p.numel() for p in self.layers[0].parameters())
        experts = sum(p.numel() for p in self.layers[0].experts.parameters()) * self.num_layers
        return {"total": total, "per_layer": per_layer,
                "shared": total - per_layer * self.num_layers, "experts": experts}
