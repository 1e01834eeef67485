"""``LoRAGenConfig``: the hyper-parameters of the reference LoRA-Gen generator, strictly validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CLOUD_SYSTEM_PROMPT", "LoRAGenConfig", "LoRAGenConfigError"]

# The seed's system prompt; the cloud model reads it in front of the persona.
DEFAULT_CLOUD_SYSTEM_PROMPT = "Analyze the dialogue context and generate task embeddings."


class LoRAGenConfigError(ValueError):
    """A ``LoRAGenConfig`` field has a bad value; ``key`` names the field."""

    def __init__(self, key: str, message: str):
        super().__init__(f"LoRAGenConfig.{key}: {message}")
        self.key = key


@dataclass
class LoRAGenConfig:
    """Hyper-parameters of :class:`~torch_curriculum.loragen.LoRAGenerator` (defaults from LoRA-Gen).

    Attributes:
        n_experts (int): LoRA experts per layer and target module (paper: 8). Default 8.
        top_k (int): experts kept per sample and layer by the KeepTop-K softmax (paper: 2); the
            gates of the kept experts sum to 1, the others are exactly 0. Default 2.
        rank (int): rank r of every expert's ``B_e A_e``. Default 16.
        lora_alpha (float): LoRA scaling numerator; the generated update of a layer is
            ``(lora_alpha / rank) * sum_e g_e B_e A_e`` (as in PEFT's ``lora_alpha``). Default 32.0
            (scaling 2).
        target_modules (tuple[str, ...]): names of the edge model's FFN projections under
            ``model.layers[i].mlp`` that receive the generated LoRA. Default
            ``("gate_proj", "up_proj", "down_proj")``.
        balance_coef (float): weight α of the cv² load-balancing loss (paper: 0.01). Default 0.01.
        meta_dim (int): width of the meta tokens t_i (the learnable queries, keys and values of the
            cross-attention over the cloud states). Default 128.
        num_query_heads (int): attention heads of that cross-attention; must divide ``meta_dim``.
            Default 4.
        router_hidden (int): hidden width of the router ``BN(f2(SiLU(f1(t_i))))``. Default 64.
        bn_momentum (float): momentum of the router's BatchNorm running statistics. Default 0.1.
        init_std_a (float | None): std of the normal init of the A matrices; None means
            ``1/sqrt(d_in)``. B starts at zero, so the generated update starts at exactly zero and
            the untrained generator reproduces the edge model. Default None.
        dropout (float): dropout on the meta tokens during training. Default 0.0.

    Raises:
        LoRAGenConfigError: on any invalid value (via :meth:`validate`, called on construction).

    Example:
        >>> LoRAGenConfig(n_experts=4, top_k=1).scaling
        2.0
    """

    n_experts: int = 8
    top_k: int = 2
    rank: int = 16
    lora_alpha: float = 32.0
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    balance_coef: float = 0.01
    meta_dim: int = 128
    num_query_heads: int = 4
    router_hidden: int = 64
    bn_momentum: float = 0.1
    init_std_a: float | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        self.validate()

    @property
    def scaling(self) -> float:
        """The LoRA scaling ``lora_alpha / rank``."""
        return float(self.lora_alpha) / self.rank

    def validate(self) -> None:
        """Check every field; raise :class:`LoRAGenConfigError` naming the first bad one."""
        for key in ("n_experts", "top_k", "rank", "meta_dim", "num_query_heads", "router_hidden"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoRAGenConfigError(key, f"must be a positive int, got {value!r}")
        if self.top_k > self.n_experts:
            raise LoRAGenConfigError(
                "top_k", f"must be <= n_experts ({self.n_experts}), got {self.top_k}")
        if self.meta_dim % self.num_query_heads:
            raise LoRAGenConfigError(
                "num_query_heads",
                f"must divide meta_dim ({self.meta_dim}), got {self.num_query_heads}")
        for key in ("lora_alpha", "balance_coef", "bn_momentum", "dropout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LoRAGenConfigError(key, f"must be a number, got {value!r}")
        if self.lora_alpha <= 0:
            raise LoRAGenConfigError("lora_alpha", f"must be > 0, got {self.lora_alpha}")
        if self.balance_coef < 0:
            raise LoRAGenConfigError("balance_coef", f"must be >= 0, got {self.balance_coef}")
        if not 0 < self.bn_momentum <= 1:
            raise LoRAGenConfigError("bn_momentum", f"must be in (0, 1], got {self.bn_momentum}")
        if not 0 <= self.dropout < 1:
            raise LoRAGenConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.init_std_a is not None and (
                isinstance(self.init_std_a, bool) or not isinstance(self.init_std_a, (int, float))
                or self.init_std_a <= 0):
            raise LoRAGenConfigError("init_std_a", f"must be None or > 0, got {self.init_std_a!r}")
        if not isinstance(self.target_modules, tuple) or not self.target_modules or not all(
                isinstance(m, str) and m for m in self.target_modules):
            raise LoRAGenConfigError(
                "target_modules", f"must be a non-empty tuple of module names, got "
                f"{self.target_modules!r}")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise LoRAGenConfigError(
                "target_modules", f"has duplicates: {self.target_modules!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoRAGenConfig:
        """Build from a dict; an unknown key is an error that names it.

        Raises:
            LoRAGenConfigError: unknown key or invalid value.
        """
        if not isinstance(data, dict):
            raise LoRAGenConfigError("<root>", f"expected a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise LoRAGenConfigError(key, f"unknown field; valid fields: {sorted(names)}")
        data = dict(data)
        if "target_modules" in data and isinstance(data["target_modules"], list):
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)
