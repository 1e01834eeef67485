"""One typed config that mirrors the seed's YAML (sections ``meta_token``, ``curriculum``, ``training``).

Every field is documented and defaulted as in the seed; fields the seed does not name carry the
library's defaults (documented on the field). Loading is strict: an unknown key, a value of the
wrong type, an out-of-range value or two values that contradict each other raise
:class:`ConfigError`, whose message names the key (``curriculum.stage_percentiles``).

Example:
    >>> cfg = CurriculumConfig.from_dict({"curriculum": {"strategy": "easy_to_hard"}})
    >>> cfg.curriculum.num_stages, cfg.meta_token.top_k
    (3, 3)
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .difficulty import AGGREGATES, METRICS, NORMALIZATIONS

__all__ = [
    "ALIGNMENTS",
    "PACING_FUNCTIONS",
    "POOLINGS",
    "SIGNALS",
    "STRATEGIES",
    "STRATEGY_ALIASES",
    "ConfigError",
    "CurriculumConfig",
    "CurriculumSection",
    "MetaTokenSection",
    "TrainingSection",
    "canonical_strategy",
    "load_yaml",
]

POOLINGS = ("mean", "last", "meta")
#: ``meta_token.signal``: ``meta`` (prompt-only meta tokens) or one of :data:`torch_curriculum.crossmodel.SIGNALS`
SIGNALS = ("meta", "response", "logit_lens_gap", "edge_bpb", "vocab_kl", "uld", "knn_agreement")
ALIGNMENTS = ("relative", "ridge", "identity")
STRATEGIES = ("random", "easy_to_hard", "layer_wise_progressive", "dynamic", "layer_specific", "hybrid")
STRATEGY_ALIASES = {"layer_wise": "layer_wise_progressive"}
PACING_FUNCTIONS = ("linear", "root", "step", "exponential", "competence")

DEFAULT_SYSTEM_PROMPT = "Analyze the dialogue context and generate task embeddings."


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, out of range or in conflict; ``key`` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def canonical_strategy(name: str) -> str:
    """Map a strategy name (or alias such as ``layer_wise``) to its canonical name.

    Raises:
        ValueError: the name is unknown; the message lists the valid ones.
    """
    name = STRATEGY_ALIASES.get(name, name)
    if name not in STRATEGIES:
        valid = ", ".join(STRATEGIES + tuple(STRATEGY_ALIASES))
        raise ValueError(f"unknown curriculum strategy {name!r}; valid strategies: {valid}")
    return name


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class MetaTokenSection:
    """``meta_token``: how meta tokens are extracted and turned into difficulty scores.

    Attributes:
        distance_metric (str): ``l2`` (seed default), ``cosine``, ``coord_softmax_kl`` (a softmax over
            aligned coordinates; the former ``kl``) or ``mahalanobis``.
        top_k (int): K of the ``topk_mean`` score (seed: 3; 3..5 is about 20% of the layers).
        system_prompt (str): the same system prompt given to both models.
        pooling (str): ``mean`` (default; masked mean over the non-system tokens), ``last`` or ``meta``.
        alignment (str): ``relative`` (default), ``ridge`` or ``identity`` (equal widths only).
        num_anchors (int): anchors of the ``relative`` alignment (seeded). Defaults to 64.
        ridge_alpha (float): L2 penalty of the ``ridge`` alignment. Defaults to 1.0.
        normalization (str): across-layer normalisation, ``rank`` (default), ``zscore``, ``robust``, ``none``.
        primary_score (str): the aggregate used for percentiles and stages. Defaults to ``topk_mean``.
        tau (float | None): tau of ``weighted_mean``; None means L/3. Defaults to None.
        kl_temperature (float): softmax temperature of the ``coord_softmax_kl`` metric. Defaults to 1.0.
        layer_map (list[int] | None): cloud layer for each edge layer; None means relative depth
            ``round((j+1)*Lc/Le) - 1``.
        max_context_turns (int): dialogue turns of context kept (the oldest are cut, and reported). Defaults to 4.
        max_length (int): token budget of one prompt per model. Defaults to 512.
        batch_size (int): extraction batch size (length-bucketed). Defaults to 16.
        signal (str): the per-sample, per-layer signal precompute scores. ``meta`` (default): the
            prompt-only meta-token distance (``distance_metric`` after ``alignment``); ``response``:
            response-conditioned meta tokens (pooled over the response), compared the same way; or a
            cross-model signal of :mod:`torch_curriculum.crossmodel`: ``logit_lens_gap``, ``edge_bpb``,
            ``vocab_kl``, ``uld``, ``knn_agreement`` (k-NN among the calibration samples). Every
            signal but ``meta`` reads the response (dialogue samples) and needs ``pooling`` mean or last.
        knn_k (int): k of ``knn_agreement``. Defaults to 10.
    """

    distance_metric: str = "l2"
    top_k: int = 3
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    pooling: str = "mean"
    alignment: str = "relative"
    num_anchors: int = 64
    ridge_alpha: float = 1.0
    normalization: str = "rank"
    primary_score: str = "topk_mean"
    tau: float | None = None
    kl_temperature: float = 1.0
    layer_map: list[int] | None = None
    max_context_turns: int = 4
    max_length: int = 512
    batch_size: int = 16
    signal: str = "meta"
    knn_k: int = 10

    def validate(self, prefix: str = "meta_token") -> None:
        """Check every field of this section.

        Args:
            prefix (str): the key path used in error messages. Defaults to ``"meta_token"``.

        Raises:
            ConfigError: a field has a wrong type, an out-of-range value or conflicts with another;
                the message and ``.key`` name it.
        """
        _choice(f"{prefix}.distance_metric", self.distance_metric, METRICS)
        _choice(f"{prefix}.pooling", self.pooling, POOLINGS)
        _choice(f"{prefix}.alignment", self.alignment, ALIGNMENTS)
        _choice(f"{prefix}.normalization", self.normalization, NORMALIZATIONS)
        _choice(f"{prefix}.primary_score", self.primary_score, AGGREGATES)
        _choice(f"{prefix}.signal", self.signal, SIGNALS)
        if self.signal != "meta" and self.pooling not in ("mean", "last"):
            raise ConfigError(f"{prefix}.pooling", f"signal={self.signal!r} reads response-conditioned states, "
                                                   f"pooled by 'mean' or 'last'; got pooling={self.pooling!r}")
        for name in ("top_k", "num_anchors", "max_context_turns", "max_length", "batch_size", "knn_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.tau is not None and not self.tau > 0:
            raise ConfigError(f"{prefix}.tau", f"must be > 0 (or null for L/3), got {self.tau}")
        if not self.kl_temperature > 0:
            raise ConfigError(f"{prefix}.kl_temperature", f"must be > 0, got {self.kl_temperature}")
        if self.ridge_alpha < 0:
            raise ConfigError(f"{prefix}.ridge_alpha", f"must be >= 0, got {self.ridge_alpha}")
        if self.layer_map is not None:
            if not self.layer_map:
                raise ConfigError(f"{prefix}.layer_map", "must be null or a non-empty list of cloud layer indices")
            if any(i < 0 for i in self.layer_map):
                raise ConfigError(f"{prefix}.layer_map", f"cloud layer indices must be >= 0, got {self.layer_map}")
            if self.top_k > len(self.layer_map):
                raise ConfigError(f"{prefix}.top_k", f"top_k={self.top_k} exceeds the {len(self.layer_map)} mapped layers")


@dataclass
class CurriculumSection:
    """``curriculum``: which strategy orders the data and how it paces.

    Attributes:
        strategy (str): ``random``, ``easy_to_hard``, ``layer_wise_progressive`` (seed default; alias
            ``layer_wise``), ``dynamic``, ``layer_specific`` or ``hybrid``.
        num_stages (int): curriculum stages S (seed: 3); must equal ``len(stage_percentiles)``.
        stage_percentiles (list[float]): upper percentile of each stage, strictly increasing, ending
            with 1.0 (seed: [0.33, 0.66, 1.0]).
        loss_threshold (float): dynamic pacing: below it the difficulty rises (seed: 2.0).
        difficulty_step_up (float): dynamic pacing: percentile increase (seed: 0.05).
        difficulty_step_down (float): dynamic pacing: percentile decrease (seed: 0.02).
        pacing_function (str): easy-to-hard pacing over time: ``linear`` (default), ``root``,
            ``step``, ``exponential`` or ``competence``.
        strict_order (bool): yield the pool in sorted (easy-first) order instead of shuffled. Defaults to False.
        adaptive_threshold (bool): dynamic pacing compares the loss to a running average of recent
            losses instead of the fixed ``loss_threshold``. Defaults to False.
        min_percentile (float | None): floor of the dynamic percentile; None means
            ``stage_percentiles[0]``.
        pacing (str): the curriculum clock: ``epoch`` (default; the pool is fixed per epoch) or
            ``step`` (every ``update(loss)`` is one step; needs ``training.steps_per_epoch``).
        adaptive_window (int): losses averaged by the adaptive threshold. Defaults to 50.
        layer_groups (int | list[list[int]] | None): layer-specific phase 1: a number of contiguous
            layer groups or explicit lists of layers; None means one group per layer (step pacing)
            or one per phase-1 epoch (epoch pacing). Defaults to None.
        phase1_epochs (float | None): layer-specific: length of phase 1 in epochs; None means half
            of the curriculum after warm-up. Defaults to None.
        phase1_order (str): layer-specific phase 1: ``sorted`` (default, easy to hard by the
            layer's d_i) or ``shuffled``.
        phase2_order (str): layer-specific phase 2: ``random`` (default) or ``easy_to_hard``.
        curriculum_steps (int | None): a step budget (DeepSpeed's ``total_curriculum_step``): the
            curriculum runs over optimizer steps (``update(loss)`` calls)
            ``[curriculum_start_step, curriculum_start_step + curriculum_steps)`` instead of the
            ``training`` epoch keys, so a one-epoch run walks every stage. Defaults to None (epochs).
        warmup_steps (int): the budget's first steps on the first stage's pool. Defaults to 0.
        curriculum_start_step (int): the budget's first step (random order before it). Defaults to 0.
    """

    strategy: str = "layer_wise_progressive"
    num_stages: int = 3
    stage_percentiles: list[float] = field(default_factory=lambda: [0.33, 0.66, 1.0])
    loss_threshold: float = 2.0
    difficulty_step_up: float = 0.05
    difficulty_step_down: float = 0.02
    pacing_function: str = "linear"
    strict_order: bool = False
    adaptive_threshold: bool = False
    min_percentile: float | None = None
    pacing: str = "epoch"
    adaptive_window: int = 50
    layer_groups: int | list[list[int]] | None = None
    phase1_epochs: float | None = None
    phase1_order: str = "sorted"
    phase2_order: str = "random"
    curriculum_steps: int | None = None
    warmup_steps: int = 0
    curriculum_start_step: int = 0

    @staticmethod
    def _complete(data: dict[str, Any]) -> dict[str, Any]:
        """Derive num_stages from stage_percentiles (or evenly spaced percentiles from num_stages)
        when only one is given; when both are given they must agree (checked in validate)."""
        data = dict(data)
        if "stage_percentiles" in data and "num_stages" not in data and isinstance(data["stage_percentiles"], list):
            data["num_stages"] = len(data["stage_percentiles"])
        elif "num_stages" in data and "stage_percentiles" not in data and isinstance(data["num_stages"], int) \
                and data["num_stages"] >= 1 and data["num_stages"] != 3:
            n = data["num_stages"]
            data["stage_percentiles"] = [round((s + 1) / n, 6) for s in range(n)]
        return data

    def validate(self, prefix: str = "curriculum") -> None:
        """Check every field of this section.

        Args:
            prefix (str): the key path used in error messages. Defaults to ``"curriculum"``.

        Raises:
            ConfigError: a field has a wrong type, an out-of-range value or conflicts with another;
                the message and ``.key`` name it.
        """
        try:
            self.strategy = canonical_strategy(self.strategy)
        except ValueError as e:
            raise ConfigError(f"{prefix}.strategy", str(e)) from None
        _choice(f"{prefix}.pacing_function", self.pacing_function, PACING_FUNCTIONS)
        if self.num_stages < 1:
            raise ConfigError(f"{prefix}.num_stages", f"must be >= 1, got {self.num_stages}")
        sp = self.stage_percentiles
        key = f"{prefix}.stage_percentiles"
        if not sp:
            raise ConfigError(key, "must be a non-empty list")
        if any(not 0 < p <= 1 for p in sp):
            raise ConfigError(key, f"every value must lie in (0, 1], got {sp}")
        if any(b <= a for a, b in itertools.pairwise(sp)):
            raise ConfigError(key, f"must be strictly increasing, got {sp}")
        if sp[-1] != 1.0:
            raise ConfigError(key, f"must end with 1.0 so that every sample has a stage, got {sp}")
        if len(sp) != self.num_stages:
            raise ConfigError(f"{prefix}.num_stages", f"num_stages={self.num_stages} conflicts with "
                              f"{len(sp)} stage_percentiles {sp}")
        for name in ("difficulty_step_up", "difficulty_step_down"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"{prefix}.{name}", f"must lie in [0, 1], got {v}")
        if self.min_percentile is not None and not 0 < self.min_percentile <= 1:
            raise ConfigError(f"{prefix}.min_percentile", f"must lie in (0, 1], got {self.min_percentile}")
        _choice(f"{prefix}.pacing", self.pacing, ("epoch", "step"))
        _choice(f"{prefix}.phase1_order", self.phase1_order, ("sorted", "shuffled"))
        _choice(f"{prefix}.phase2_order", self.phase2_order, ("random", "easy_to_hard"))
        if self.adaptive_window < 1:
            raise ConfigError(f"{prefix}.adaptive_window", f"must be >= 1, got {self.adaptive_window}")
        g = self.layer_groups
        if isinstance(g, int) and g < 1:
            raise ConfigError(f"{prefix}.layer_groups", f"must be >= 1 groups, got {g}")
        if isinstance(g, list):
            flat = [i for grp in g for i in grp]
            if not g or any(not grp for grp in g):
                raise ConfigError(f"{prefix}.layer_groups", f"must be non-empty lists of layer indices, got {g}")
            if any(i < 0 for i in flat) or len(set(flat)) != len(flat):
                raise ConfigError(f"{prefix}.layer_groups", f"layer indices must be >= 0 and not repeat, got {g}")
        if self.phase1_epochs is not None and self.phase1_epochs < 0:
            raise ConfigError(f"{prefix}.phase1_epochs", f"must be >= 0 (or null), got {self.phase1_epochs}")
        if self.curriculum_steps is not None and self.curriculum_steps < 1:
            raise ConfigError(f"{prefix}.curriculum_steps", f"must be >= 1 (or null), got {self.curriculum_steps}")
        for name in ("warmup_steps", "curriculum_start_step"):
            v = getattr(self, name)
            if v < 0:
                raise ConfigError(f"{prefix}.{name}", f"must be >= 0, got {v}")
            if v and self.curriculum_steps is None:
                raise ConfigError(f"{prefix}.{name}", "needs curriculum_steps (the step budget)")
        if self.curriculum_steps is not None and self.warmup_steps > self.curriculum_steps:
            raise ConfigError(f"{prefix}.warmup_steps", f"warmup_steps={self.warmup_steps} exceeds "
                              f"curriculum_steps={self.curriculum_steps}")


@dataclass
class TrainingSection:
    """``training``: when the curriculum runs.

    Attributes:
        curriculum_start_epoch (int): epoch at which the curriculum starts (seed: 0); before it, random order.
        curriculum_end_epoch (int): from this epoch on the full data set is used in random order (seed: 5).
        warmup_epochs (int): the first N curriculum epochs use the first stage's (easiest) pool (seed: 1).
        seed (int): seed of every sampler's permutation. Defaults to 0.
        steps_per_epoch (int | None): optimisation steps per epoch, the unit of ``curriculum.pacing:
            step`` (required there). Defaults to None.
        samples_per_epoch (int | None): indices drawn per epoch (all ranks together); None means the
            pool size for pools fixed per epoch and the data set size for pools that move within an
            epoch. Defaults to None.
    """

    curriculum_start_epoch: int = 0
    curriculum_end_epoch: int = 5
    warmup_epochs: int = 1
    seed: int = 0
    steps_per_epoch: int | None = None
    samples_per_epoch: int | None = None

    def validate(self, prefix: str = "training") -> None:
        """Check every field of this section.

        Args:
            prefix (str): the key path used in error messages. Defaults to ``"training"``.

        Raises:
            ConfigError: a field has a wrong type, an out-of-range value or conflicts with another;
                the message and ``.key`` name it.
        """
        for name in ("curriculum_start_epoch", "curriculum_end_epoch", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.curriculum_end_epoch < self.curriculum_start_epoch:
            raise ConfigError(f"{prefix}.curriculum_end_epoch",
                              f"curriculum_end_epoch={self.curriculum_end_epoch} is before "
                              f"curriculum_start_epoch={self.curriculum_start_epoch}")
        for name in ("steps_per_epoch", "samples_per_epoch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{prefix}.{name}", f"must be >= 1 (or null), got {v}")
        span = self.curriculum_end_epoch - self.curriculum_start_epoch
        if self.warmup_epochs > span:
            raise ConfigError(f"{prefix}.warmup_epochs",
                              f"warmup_epochs={self.warmup_epochs} exceeds the curriculum's {span} epochs "
                              f"({self.curriculum_start_epoch}..{self.curriculum_end_epoch})")


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file strictly: UTF-8 (a BOM is allowed), and a key that occurs twice in one
    mapping is an error (plain YAML loaders keep the last one silently).

    Args:
        path (str | Path): the file.

    Returns:
        Any: the parsed document.

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: the path is a directory.
        ConfigError: keyed by the file name: invalid UTF-8 (line and byte offset named), invalid
            YAML, or a duplicate key (the key and both lines named).

    Example:
        >>> load_yaml("examples/configs/seed.yaml")["curriculum"]["strategy"]  # doctest: +SKIP
        'layer_wise_progressive'
    """
    import yaml  # transformers depends on pyyaml

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config {path} is a directory, expected a YAML file")
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(str(path), f"is not UTF-8 text (line {line}, byte offset {e.start}: "
                          f"{raw[e.start:e.start + 1]!r})") from None

    class _StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges, it is not a key
                continue
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the base constructor reports it
                continue
            if first is not None:
                raise ConfigError(str(path), f"duplicate key {key!r} at line {line} (first defined at line {first}); "
                                  "YAML would silently keep only the last one")
            seen[key] = line
        return loader.construct_mapping(node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"is not valid YAML: {e}") from None


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` (parsed from YAML/JSON) fits the annotation ``tp``; bools are never numbers."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported config annotation {tp!r}")  # pragma: no cover - programming error


def _coerce(value: Any, tp: Any) -> Any:
    """Turn YAML ints into floats where the field is a float (``loss_threshold: 2``), tuples into lists."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None) and _type_ok(value, a))
        origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_coerce(v, item) for v in value]
    return float(value) if tp is float else value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build_section(cls: type, data: Any, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"must be a mapping, got {type(data).__name__}")
    if hasattr(cls, "_complete"):
        data = cls._complete(data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{prefix}.{key}", f"unknown key{hint}")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{prefix}.{key}",
                              f"expected {_type_name(hints[key])}, got {type(value).__name__} {value!r}")
        value = _coerce(value, hints[key])
        kwargs[key] = value
    section = cls(**kwargs)
    _check_values(section, prefix)
    section.validate(prefix)
    return section


# What torch.Generator().manual_seed and numpy.random.default_rng both accept.
SEED_RANGE = (0, 2**64 - 1)


def _check_values(section: Any, prefix: str) -> None:
    """Checks common to every field: numbers are finite (YAML ``.nan`` / ``.inf`` would silently stop
    pacing or ordering), and ``seed`` is one that torch and numpy accept (checked here, not after
    hours of model passes)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        items = value if isinstance(value, list) else [value]
        for v in items:
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, float) and not math.isfinite(x):
                    raise ConfigError(f"{prefix}.{f.name}", f"must be a finite number, got {x}")
        if f.name == "seed" and isinstance(value, int) and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise ConfigError(f"{prefix}.seed", f"must lie in [0, 2**64 - 1] (what torch.manual_seed and "
                              f"numpy.random.default_rng accept), got {value}")


@dataclass
class CurriculumConfig:
    """The whole configuration: the seed's YAML sections as typed dataclasses.

    Attributes:
        meta_token (MetaTokenSection): extraction and scoring.
        curriculum (CurriculumSection): strategy and pacing.
        training (TrainingSection): curriculum epochs and seed.

    Example:
        >>> cfg = CurriculumConfig.from_yaml("examples/configs/seed.yaml")  # doctest: +SKIP
        >>> CurriculumConfig().to_dict()["curriculum"]["stage_percentiles"]
        [0.33, 0.66, 1.0]
    """

    meta_token: MetaTokenSection = field(default_factory=MetaTokenSection)
    curriculum: CurriculumSection = field(default_factory=CurriculumSection)
    training: TrainingSection = field(default_factory=TrainingSection)

    _SECTIONS: typing.ClassVar[dict[str, type]] = {"meta_token": MetaTokenSection, "curriculum": CurriculumSection, "training": TrainingSection}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Re-check every section (call after changing fields by hand).

        Raises:
            ConfigError: naming the offending key.
        """
        for name, cls in self._SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError(name, f"must be a {cls.__name__}, got {type(section).__name__}")
            _check_values(section, name)
            section.validate(name)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CurriculumConfig:
        """Build from a nested mapping (as parsed from YAML).

        Raises:
            ConfigError: unknown section or key, wrong type, out-of-range or conflicting value.
        """
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError("<root>", f"must be a mapping with sections {', '.join(cls._SECTIONS)}, "
                              f"got {type(data).__name__}")
        for key in data:
            if key not in cls._SECTIONS:
                close = difflib.get_close_matches(str(key), list(cls._SECTIONS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; sections: {', '.join(cls._SECTIONS)}"
                raise ConfigError(str(key), f"unknown section{hint}")
        sections = {name: _build_section(sc, data.get(name), name) for name, sc in cls._SECTIONS.items()}
        return cls(**sections)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CurriculumConfig:
        """Load a YAML file in the seed's layout.

        Raises:
            FileNotFoundError: the file does not exist.
            IsADirectoryError: the path is a directory.
            ConfigError: the file is not UTF-8, the YAML cannot be parsed or holds a duplicate key
                (key ``<file>``, with the line), or a value is invalid.
        """
        path = Path(path)
        data = load_yaml(path)
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(e.key, f"{str(e)[len(e.key) + 2:]} (in {path})") from None

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-Python dict; ``from_dict(cfg.to_dict()) == cfg``."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in self._SECTIONS}

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Dump as YAML (and write it to ``path`` when given). Returns the YAML text."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text
