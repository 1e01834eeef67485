"""The seed's experiments: every curriculum strategy and control vs. random, over seeds, with H1-H3.

Usage (the installed command; ``python -m torch_curriculum`` works the same)::

    torch-curriculum experiment --config noisy --out results/noisy      # the positive control
    torch-curriculum experiment --config cpu --out results/cpu [--shard 1/4]
    torch-curriculum experiment --config my.yaml --data dialogues.jsonl
    torch-curriculum report results/cpu                                   # merge shards, write the report

A preset is a YAML file (shipped ones in ``torch_curriculum/experiments/presets/``), loaded strictly
(an unknown key is an error naming it). What one invocation does, writing under ``--out``:

1. reads the dialogues and draws the train / validation / test splits (test is used for nothing
   but the final test loss); with ``data.noise_fraction`` it replaces a seeded share of the
   training responses by responses of other conversations (:func:`inject_noise`, flags in
   ``arrays/noise_flags.npy``);
2. loads the edge and cloud models (``bundled``, Hugging Face ids or local folders, tiny random models);
3. precomputes the meta-token differences of the training split once per pooling and derives the
   distances of every metric from the SAME pooled vectors (``difficulty/<pooling>_<metric>.safetensors``);
   with ``h1.heldout`` the same for the validation split (``heldout/``);
4. computes the cheap per-sample signals (:mod:`torch_curriculum.experiments.signals`: response
   length, bare edge loss, cloud-minus-edge loss gap, IFD), cached in ``signals.npz``;
5. trains the reference LoRA-Gen generator under every strategy and control, for every seed (and
   every budget of ``budgets``, into ``<out>/<budget>/``), with the same initialisation per seed,
   budget, data and evaluation schedule; each run's log is ``runs/<strategy>/seed<k>.jsonl``. A
   finished run is never redone, so an interrupted invocation resumes where it stopped;
   ``--shard i/n`` trains every n-th run only;
6. :func:`collect_results` builds ``results.json`` (H1/H2/H3 with MDEs, the positive control, the
   held-out and per-layer H1 targets, provenance) and ``report.md`` + ``plots/``.

Controls (:data:`CONTROL_INFO`): ``ctrl_length``, ``ctrl_edge_loss`` (easy to hard without the
cloud model), ``anti_curriculum`` (the reverse of ours), ``oracle`` (clean samples first, the
positive control), ``lwp_freeze_only`` / ``lwp_order_only`` (layer_wise_progressive's layer
schedule with random order / its order with every layer trainable).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import CurriculumConfig, MetaTokenDifficultyDataset
from .._host import host_info
from .._io import atomic_write, atomic_write_text
from ..config import STRATEGIES, canonical_strategy
from ..difficulty import METRICS
from . import report as _report
from . import results as _results

PRESETS_DIR = Path(__file__).resolve().parent / "presets"

__all__ = ["CONTROLS", "PresetError", "collect_results", "experiment_status", "inject_noise", "load_preset", "parse_shard",
           "pinned_autocast", "resolve_autocast", "resolve_preset", "run_preset", "validate_preset"]

logger = logging.getLogger("torch_curriculum.experiments")

CONTROLS = ("ctrl_length", "ctrl_edge_loss", "anti_curriculum", "oracle", "lwp_freeze_only", "lwp_order_only")
CONTROL_INFO = {
    "ctrl_length": "easy to hard by response length (edge tokens); no cloud model",
    "ctrl_edge_loss": "easy to hard by the bare edge model's response loss before training; no cloud model",
    "anti_curriculum": "hard to easy by the primary meta-token score (the reverse of easy_to_hard)",
    "oracle": "positive control: easy to hard by the injected-noise flag (clean samples first, random "
              "order within each class); needs data.noise_fraction > 0",
    "lwp_freeze_only": "layer_wise_progressive's stage schedule of trainable generator layers with random data "
                       "order (what layer freezing alone does)",
    "lwp_order_only": "layer_wise_progressive's data order with every generator layer trainable (what the "
                      "order alone does)",
}
#: control -> (sampler strategy, layer_mode of run_strategy, score column or None for the meta-token table)
_CONTROL_RUNS = {"ctrl_length": ("easy_to_hard", "both", "response_length"),
                 "ctrl_edge_loss": ("easy_to_hard", "both", "edge_loss_before"),
                 "anti_curriculum": ("easy_to_hard", "both", "anti"),
                 "oracle": ("easy_to_hard", "both", "oracle"),
                 "lwp_freeze_only": ("layer_wise_progressive", "freeze_only", None),
                 "lwp_order_only": ("layer_wise_progressive", "order_only", None)}
AUTOCAST_MODES = ("auto", "bf16", "none")
AGGREGATE_KEYS = ("mean", "weighted_mean", "max", "topk_mean")

# The preset schema: section -> {key: (type(s), default)}; REQUIRED marks keys without a default.
REQUIRED = object()
_SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "models": {"edge": ((dict, str), REQUIRED), "cloud": ((dict, str), REQUIRED), "dtype": (str, "float32"),
               "device": ((str, type(None)), None)},
    "data": {"source": (str, "chitchat"), "train_samples": (int, REQUIRED), "val_samples": (int, REQUIRED),
             "test_samples": (int, REQUIRED), "max_length": (int, 128), "split_seed": (int, 0),
             "noise_fraction": ((int, float), 0.0), "noise_seed": (int, 0)},
    "training": {"steps": (int, REQUIRED), "batch_size": (int, 8), "lr": ((int, float), 2e-3),
                 "eval_every": (int, REQUIRED), "eval_batch_size": ((int, type(None)), None),
                 "generator": (dict, {}), "autocast": (str, "auto")},
    "h1": {"metrics": (list, list(METRICS)), "poolings": (list, ["mean"]), "n_boot": (int, 1000),
           "signal_batch_size": (int, 8), "confidence": ((int, float), 0.95),
           "grad_samples": (int, 0), "heldout": (bool, False), "signals": (list, [])},
    "analysis": {"target": (str, "pooled"),
                 "target_fraction": ((int, float), 0.5), "power": ((int, float), 0.8)},
}
_TOP = {"preset": (str, REQUIRED), "description": (str, ""), "seeds": (list, REQUIRED),
        "strategies": (list, list(STRATEGIES)), "controls": (list, list(CONTROLS)),
        "threads": ((int, type(None)), None), "curriculum": (dict, {}), "budgets": (dict, {}),
        **{k: (dict, {} if k == "analysis" else REQUIRED) for k in _SCHEMA}}
_MODEL_KEYS = {"bundled": {"kind", "name"}, "hf": {"kind", "name", "gguf_file"},
               "tiny": {"kind", "arch", "hidden", "layers", "heads", "kv_heads", "seed"}}


class PresetError(ValueError):
    """A preset file is malformed; the message names the key (``training.steps``) and the file."""


def _typename(tp: Any) -> str:
    tps = tp if isinstance(tp, tuple) else (tp,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in tps)


def _check(value: Any, tp: Any, key: str) -> None:
    tps = tp if isinstance(tp, tuple) else (tp,)
    if isinstance(value, bool) and bool not in tps:
        raise PresetError(f"{key}: expected {_typename(tp)}, got a bool {value!r}")
    if not isinstance(value, tps):
        raise PresetError(f"{key}: expected {_typename(tp)}, got {type(value).__name__} {value!r}")


def _section(data: Any, schema: Mapping[str, tuple[Any, Any]], prefix: str) -> dict[str, Any]:
    import difflib

    if not isinstance(data, dict):
        raise PresetError(f"{prefix or '<root>'}: must be a mapping, got {type(data).__name__}")
    out = {}
    for key in data:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(schema)}"
            raise PresetError(f"{prefix}{key}: unknown key{hint}")
    for key, (tp, default) in schema.items():
        if key not in data:
            if default is REQUIRED:
                raise PresetError(f"{prefix}{key}: required key is missing")
            out[key] = copy.deepcopy(default)
            continue
        _check(data[key], tp, f"{prefix}{key}")
        out[key] = data[key]
    return out


def validate_preset(data: Any) -> dict[str, Any]:
    """Check a parsed preset and fill in defaults; returns the complete preset dict.

    The ``curriculum`` section is a :class:`CurriculumConfig` dict (validated by
    ``CurriculumConfig.from_dict``), ``training.generator`` a ``LoRAGenConfig`` dict.

    Raises:
        PresetError: unknown/missing key, wrong type, bad value; the message names the key.
    """
    from torch_curriculum.loragen import LoRAGenConfig, LoRAGenConfigError

    cfg = _section(data, _TOP, "")
    for name, schema in _SCHEMA.items():
        cfg[name] = _section(cfg[name], schema, f"{name}.")
    for side in ("edge", "cloud"):
        spec = cfg["models"][side]
        if isinstance(spec, str):  # shorthand: "bundled" | "bundled:edge" | an HF id | a local folder
            spec = ({"kind": "bundled", "name": spec.split(":", 1)[1] if ":" in spec else side}
                    if spec.split(":", 1)[0] == "bundled" else {"kind": "hf", "name": spec})
            cfg["models"][side] = spec
        kind = spec.get("kind")
        if kind not in _MODEL_KEYS:
            raise PresetError(f"models.{side}.kind: must be one of {', '.join(_MODEL_KEYS)}, got {kind!r}")
        unknown = sorted(set(spec) - _MODEL_KEYS[kind])
        if unknown:
            raise PresetError(f"models.{side}.{unknown[0]}: unknown key for kind {kind!r}; "
                              f"known: {', '.join(sorted(_MODEL_KEYS[kind]))}")
        if kind in ("bundled", "hf") and not isinstance(spec.get("name"), str):
            raise PresetError(f"models.{side}.name: required (a str) for kind {kind!r}")
    if cfg["models"]["dtype"] not in ("float32", "bfloat16", "float16"):
        raise PresetError(f"models.dtype: must be float32, bfloat16 or float16, got {cfg['models']['dtype']!r}")
    for key in ("train_samples", "val_samples", "test_samples"):
        if cfg["data"][key] < (4 if key == "train_samples" else 1):
            raise PresetError(f"data.{key}: too small ({cfg['data'][key]})")
    if not 0 <= cfg["data"]["noise_fraction"] < 1:
        raise PresetError(f"data.noise_fraction: must be in [0, 1), got {cfg['data']['noise_fraction']}")
    if "oracle" in cfg["controls"] and cfg["data"]["noise_fraction"] <= 0:
        raise PresetError("controls: 'oracle' orders samples by the injected-noise flag; set data.noise_fraction > 0")
    if cfg["training"]["autocast"] not in AUTOCAST_MODES:
        raise PresetError(f"training.autocast: must be one of {', '.join(AUTOCAST_MODES)}, "
                          f"got {cfg['training']['autocast']!r}")
    an = cfg["analysis"]
    if an["target"] not in ("pooled", "baseline"):
        raise PresetError(f"analysis.target: must be pooled or baseline, got {an['target']!r}")
    if not 0 < an["target_fraction"] < 1 or not 0 < an["power"] < 1:
        raise PresetError("analysis: target_fraction and power must be in (0, 1)")
    if cfg["data"]["max_length"] < 8:
        raise PresetError(f"data.max_length: must be >= 8, got {cfg['data']['max_length']}")
    tr = cfg["training"]
    for key in ("steps", "batch_size", "eval_every"):
        if tr[key] < 1:
            raise PresetError(f"training.{key}: must be >= 1, got {tr[key]}")
    if tr["lr"] <= 0:
        raise PresetError(f"training.lr: must be > 0, got {tr['lr']}")
    try:
        LoRAGenConfig.from_dict(dict(tr["generator"]))
    except LoRAGenConfigError as e:
        raise PresetError(f"training.generator.{e.key}: {str(e).split(': ', 1)[1]}") from None
    seeds = cfg["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise PresetError(f"seeds: must be a non-empty list of distinct ints, got {seeds!r}")
    try:
        strategies = [canonical_strategy(s) for s in cfg["strategies"]]
    except (ValueError, TypeError) as e:
        raise PresetError(f"strategies: {e}") from None
    if "random" not in strategies:
        raise PresetError("strategies: must include 'random' (the baseline)")
    cfg["strategies"] = ["random"] + [s for s in dict.fromkeys(strategies) if s != "random"]
    for c in cfg["controls"]:
        if c not in CONTROLS:
            raise PresetError(f"controls: unknown control {c!r}; valid: {', '.join(CONTROLS)}")
    try:
        cur = CurriculumConfig.from_dict(copy.deepcopy(cfg["curriculum"]))
    except ValueError as e:
        raise PresetError(f"curriculum.{e}") from None
    h1 = cfg["h1"]
    for m in h1["metrics"]:
        if m not in METRICS:
            raise PresetError(f"h1.metrics: unknown metric {m!r}; valid: {', '.join(METRICS)}")
    for p in h1["poolings"]:
        if p not in ("mean", "last"):
            raise PresetError(f"h1.poolings: {p!r} is not a pooling the runner can extract (mean, last)")
    for x in h1["signals"]:
        if x not in XM_H1_SIGNALS:
            raise PresetError(f"h1.signals: {x!r} is not a cross-model signal the runner writes from the meta-token "
                              f"pass; valid: {', '.join(XM_H1_SIGNALS)}")
    if len(set(h1["signals"])) != len(h1["signals"]):
        raise PresetError(f"h1.signals: listed twice: {h1['signals']}")
    mt = cur.meta_token
    if mt.distance_metric not in h1["metrics"]:
        raise PresetError(f"h1.metrics: must include the curriculum's metric {mt.distance_metric!r}")
    if mt.pooling not in h1["poolings"]:
        raise PresetError(f"h1.poolings: must include the curriculum's pooling {mt.pooling!r}")
    if h1["n_boot"] < 10 or h1["signal_batch_size"] < 1 or not 0 < h1["confidence"] < 1:
        raise PresetError("h1: n_boot must be >= 10, signal_batch_size >= 1, confidence in (0, 1)")
    _check_precompute_sizes(cfg, cur, h1)
    t = cur.training
    if cur.curriculum.pacing == "step" and t.steps_per_epoch and \
            t.curriculum_end_epoch * t.steps_per_epoch > tr["steps"]:
        raise PresetError(f"curriculum.training.steps_per_epoch: the curriculum spans "
                          f"{t.curriculum_end_epoch} x {t.steps_per_epoch} steps, more than training.steps="
                          f"{tr['steps']} (the strategies would never reach the full data set)")
    for name, spec in cfg["budgets"].items():
        if not isinstance(name, str) or not name.isidentifier():
            raise PresetError(f"budgets.{name}: a budget name must be an identifier (it names a folder)")
        if not isinstance(spec, dict):
            raise PresetError(f"budgets.{name}: must be a mapping, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(_BUDGET_KEYS))
        if unknown:
            raise PresetError(f"budgets.{name}.{unknown[0]}: unknown key; known: {', '.join(_BUDGET_KEYS)}")
        if "steps" not in spec or "eval_every" not in spec:
            raise PresetError(f"budgets.{name}: steps and eval_every are required")
        try:
            budget_config(cfg, name)
        except PresetError as e:
            raise PresetError(f"budgets.{name}: {e}") from None
    return cfg


# ``lr`` is per budget because a rate that is right under one epoch can overfit over three
_BUDGET_KEYS = ("steps", "eval_every", "lr", "steps_per_epoch", "curriculum_end_epoch", "warmup_epochs")


def budget_config(cfg: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    """The preset as it applies to one budget (its steps, evaluation period, learning rate and pacing).

    A preset with ``budgets`` runs every strategy once per budget, into ``<out>/<budget>/``; the
    data, difficulty files and signals are shared. ``name=None`` (or a preset without budgets)
    returns the preset itself.

    Raises:
        PresetError: unknown budget or an invalid combination (e.g. a curriculum longer than the budget).
    """
    if name is None:
        return copy.deepcopy(dict(cfg))
    if name not in cfg["budgets"]:
        raise PresetError(f"budgets: no budget named {name!r}; known: {', '.join(cfg['budgets'])}")
    spec = cfg["budgets"][name]
    out = copy.deepcopy(dict(cfg))
    out["budgets"] = {}
    out["training"]["steps"] = spec["steps"]
    out["training"]["eval_every"] = spec["eval_every"]
    if "lr" in spec:
        out["training"]["lr"] = spec["lr"]
    tr = out["curriculum"].setdefault("training", {})
    for key in ("steps_per_epoch", "curriculum_end_epoch", "warmup_epochs"):
        if key in spec:
            tr[key] = spec[key]
    return validate_preset(out)


def budget_names(cfg: Mapping[str, Any]) -> list[str | None]:
    """The budgets of a preset (``[None]`` when it has a single budget)."""
    return list(cfg["budgets"]) or [None]


def run_root(out: Path, budget: str | None) -> Path:
    """Where the runs, results and report of one budget go (``out`` itself without budgets)."""
    return Path(out) / budget if budget else Path(out)


def load_preset(path: str | Path) -> dict[str, Any]:
    """Read and validate a preset YAML file (see :func:`validate_preset`).

    Raises:
        FileNotFoundError: no such file. PresetError: invalid YAML or content (names file and key).
    """
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PresetError(f"{path}: not valid YAML: {e}") from None
    try:
        return validate_preset(data)
    except PresetError as e:
        raise PresetError(f"{e} (in {path})") from None


# ---------------------------------------------------------------------------------------------
# Data and models
# ---------------------------------------------------------------------------------------------


def _subsample(samples: Sequence[Any], n: int, seed: int) -> list[Any]:
    if n >= len(samples):
        return list(samples)
    idx = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in idx]


def load_splits(data_cfg: Mapping[str, Any]) -> tuple[list, list, list, str, Path | None]:
    """Train/val/test samples, a description, and the data file (for the fingerprint).

    ``chitchat``: the package's conversation-level hash splits. A file: contiguous 80/10/10 blocks
    (samples of one dialogue are consecutive, so the splits mostly hold other conversations).

    Raises:
        PresetError: a split smaller than asked.
    """
    seed, src = data_cfg["split_seed"], data_cfg["source"]
    n_tr, n_va, n_te = data_cfg["train_samples"], data_cfg["val_samples"], data_cfg["test_samples"]
    if src == "chitchat":
        from torch_curriculum.bundled import chitchat_path, load_chitchat

        parts = [load_chitchat(split=s) for s in ("train", "valid", "test")]
        desc, path = "chitchat-dataset (bundled), conversation-level hash splits", chitchat_path()
    else:
        from torch_curriculum.data import read_dialogues

        path = Path(src)
        samples = read_dialogues(path)
        n = len(samples)
        a, b = int(n * 0.8), int(n * 0.9)
        parts = [samples[:a], samples[a:b], samples[b:]]
        desc = f"{path.name} (contiguous 80/10/10 blocks)"
    out = []
    for k, (part, want, name) in enumerate(zip(parts, (n_tr, n_va, n_te), ("train", "val", "test"))):
        if len(part) < want:
            raise PresetError(f"data.{name}_samples: asked for {want} but the {name} split of {src} has "
                              f"{len(part)} samples")
        out.append(_subsample(part, want, seed + k))
    return out[0], out[1], out[2], desc, path


def tiny_tokenizer(texts: Sequence[str]) -> Any:
    """An offline lower-cased word-level tokenizer over the words of ``texts`` (BOS-prefixed)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3}
    for t in texts:
        for word, _ in pre.pre_tokenize_str(t.lower()):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   pad_token="[PAD]", padding_side="right")


def _tiny_model(spec: Mapping[str, Any], vocab: int) -> Any:
    import transformers

    arch = spec.get("arch", "llama")
    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
    if arch not in classes:
        raise PresetError(f"models.*.arch: tiny models are llama or qwen2, got {arch!r}")
    hidden = int(spec.get("hidden", 32))
    torch.manual_seed(int(spec.get("seed", 0)))
    conf = getattr(transformers, classes[arch][0])(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=int(spec.get("layers", 4)),
        num_attention_heads=int(spec.get("heads", 4)), num_key_value_heads=int(spec.get("kv_heads", 2)),
        vocab_size=vocab, max_position_embeddings=1024, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return getattr(transformers, classes[arch][1])(conf).eval()


def load_models(models_cfg: Mapping[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """``{"edge": (model, tok), "cloud": (model, tok), "info": {...}}`` as the preset describes."""
    dtype = getattr(torch, models_cfg["dtype"])
    device = models_cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    out: dict[str, Any] = {"info": {}}
    shared_tok = None
    for side in ("edge", "cloud"):
        spec = models_cfg[side]
        if spec["kind"] == "bundled":
            from torch_curriculum.bundled import load_bundled, qwen_gguf, smollm2_gguf

            model, tok = load_bundled(spec["name"], dtype=dtype)
            gguf = smollm2_gguf() if spec["name"] == "edge" else qwen_gguf()
            info = {"kind": "bundled", "name": spec["name"], "gguf": gguf.name}
        elif spec["kind"] == "hf":
            from torch_curriculum.bundled import load_model

            model, tok = load_model(spec["name"], gguf_file=spec.get("gguf_file"), dtype=dtype)
            info = {"kind": "hf", "name": spec["name"]}
        else:
            shared_tok = shared_tok or tiny_tokenizer(texts)
            tok = shared_tok
            model = _tiny_model(spec, len(tok)).to(dtype)
            info = {"kind": "tiny", **{k: v for k, v in spec.items() if k != "kind"}}
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        info.update(arch=type(model).__name__, layers=int(model.config.num_hidden_layers),
                    hidden=int(model.config.hidden_size), dtype=models_cfg["dtype"], device=device)
        out[side] = (model, tok)
        out["info"][side] = info
    return out


# ---------------------------------------------------------------------------------------------
# Difficulty and signals
# ---------------------------------------------------------------------------------------------


def _curriculum_config(cfg: Mapping[str, Any], **meta: Any) -> CurriculumConfig:
    d = copy.deepcopy(cfg["curriculum"])
    d.setdefault("meta_token", {}).update(meta)
    return CurriculumConfig.from_dict(d)


def _check_precompute_sizes(cfg: Mapping[str, Any], cur: CurriculumConfig, h1: Mapping[str, Any]) -> None:
    """The precomputes the preset will run are possible with its sample counts (checked before any model
    loads: e.g. Mahalanobis under ``relative`` alignment needs samples outside the anchors)."""
    import warnings

    from ..precompute import _plan

    splits = [("data.train_samples", cfg["data"]["train_samples"], False)]
    if h1["heldout"]:
        splits.append(("data.val_samples (h1.heldout scores the validation split too)", cfg["data"]["val_samples"],
                       True))
    for field, n, heldout in splits:
        ccfg = copy.deepcopy(cur)
        ccfg.meta_token.num_anchors = _num_anchors(cur.meta_token.num_anchors, int(n), heldout)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _plan(int(n), ccfg, 1024, None, list(h1["metrics"]))
        except ValueError as e:
            raise PresetError(f"{field}={n}: too few samples for the h1 precompute: {e}") from None


#: cross-model signals of ``h1.signals`` (extra outputs of the curriculum pooling's precompute; ``response``
#: and ``knn_agreement`` need response-conditioned vectors, not the prompt-only ones the runner extracts)
XM_H1_SIGNALS = ("logit_lens_gap", "edge_bpb", "vocab_kl", "uld")


def _xm_path(ddir: Path, name: str) -> Path:
    return ddir / f"crossmodel_{name}.safetensors"


def _num_anchors(k: int, n: int, heldout: bool) -> int:
    """Anchors of a split's precompute: the configured K for the training split; for the held-out split
    at most a quarter of its samples (at least 4), so that samples outside the anchors remain to fit the
    Mahalanobis covariances on (H1 (a) correlates within the split, so its anchor space need not be the
    training split's; the file's provenance records K)."""
    return k if not heldout else min(k, max(4, n // 4))


def precompute_difficulty(cfg: Mapping[str, Any], train: Sequence[Any], models: Mapping[str, Any],
                          out: Path, *, heldout: bool = False) -> dict[tuple[str, str], MetaTokenDifficultyDataset]:
    """One difficulty file per (pooling, metric); the models run once per pooling.

    Each pooling is one :func:`torch_curriculum.precompute.precompute` call whose primary file is the
    first of ``h1.metrics`` and whose ``outputs=`` are the others: one pass over the models per pooling,
    every metric from the same shards (``difficulty/work_<pooling>``, deleted after the merge).
    ``heldout``: the validation split (fewer anchors, see :func:`_num_anchors`). The cross-model
    signals of ``h1.signals`` are outputs of the curriculum pooling's run too (one more
    prompt+response pass per shard), keyed ``("crossmodel", name)``.
    """
    files = {}
    ddir = out / "difficulty"
    ddir.mkdir(parents=True, exist_ok=True)
    metrics = list(cfg["h1"]["metrics"])
    k_cfg = _curriculum_config(cfg).meta_token.num_anchors
    k = _num_anchors(k_cfg, len(train), heldout)
    if k != k_cfg:
        logger.warning("held-out difficulty: %d anchors instead of num_anchors=%d (N=%d samples; samples outside "
                       "the anchors fit the Mahalanobis covariances)", k, k_cfg, len(train))
    main_pooling = _curriculum_config(cfg).meta_token.pooling
    xm = list(cfg["h1"].get("signals", []))
    for pooling in cfg["h1"]["poolings"]:
        paths = {m: ddir / f"{pooling}_{m}.safetensors" for m in metrics}
        extra = {x: _xm_path(ddir, x) for x in xm} if pooling == main_pooling else {}
        ccfg = _curriculum_config(cfg, pooling=pooling, distance_metric=metrics[0], num_anchors=k)
        logger.info("difficulty: pooling=%s metrics=%s -> %s", pooling, ", ".join(metrics + list(extra)), ddir)
        MetaTokenDifficultyDataset.precompute(
            train, models["cloud"], models["edge"], paths[metrics[0]], ccfg, work_dir=ddir / f"work_{pooling}",
            model_info=models["info"], outputs={**{m: paths[m] for m in metrics[1:]}, **extra},
            progress=logger.isEnabledFor(logging.INFO))  # bars only where the progress log shows (not --quiet)
        for m in metrics:
            files[(pooling, m)] = MetaTokenDifficultyDataset(paths[m])
        for x, p in extra.items():
            files[("crossmodel", x)] = MetaTokenDifficultyDataset(p)
    return files


def compute_signals(cfg: Mapping[str, Any], train: Sequence[Any], models: Mapping[str, Any],
                    out: Path, fingerprint: str) -> dict[str, np.ndarray]:
    """The cheap signals (cached in ``signals.npz`` under ``fingerprint``: samples, models, lengths)."""
    from . import signals as sig

    path = out / "signals.npz"
    if path.is_file():
        with np.load(path) as npz:
            if str(npz["fingerprint"]) == fingerprint:
                return {k: npz[k] for k in npz.files if k != "fingerprint"}
    mt = _curriculum_config(cfg).meta_token
    pairs = sig.dialogue_pairs(train, max_context_turns=mt.max_context_turns)
    bs, ml = cfg["h1"]["signal_batch_size"], cfg["data"]["max_length"]
    edge, edge_tok = models["edge"]
    cloud, cloud_tok = models["cloud"]
    t0 = time.perf_counter()
    edge_loss = sig.response_losses(edge, edge_tok, pairs, batch_size=bs, max_length=ml)
    ifd = sig.ifd_scores(edge, edge_tok, pairs, batch_size=bs, max_length=ml, conditional=edge_loss)
    t_edge = time.perf_counter() - t0
    cloud_loss = sig.response_losses(cloud, cloud_tok, pairs, batch_size=bs, max_length=ml)
    logger.info("cheap signals: edge passes %.1f s, cloud pass %.1f s", t_edge, time.perf_counter() - t0 - t_edge)
    res = {"response_length": sig.response_lengths(edge_tok, pairs), "edge_loss_before": edge_loss,
           "cloud_minus_edge_loss": cloud_loss - edge_loss, "ifd": ifd, "cloud_loss": cloud_loss}
    with atomic_write(path) as f:  # a file object: np.savez adds no suffix
        np.savez(f, fingerprint=np.array(fingerprint), **res)
    return res


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


# Run settings a finished log must share with the current preset to be reused.
_RESUME_KEYS = ("steps", "batch_size", "lr", "seed", "data_fingerprint", "difficulty_fingerprint", "generator",
                "curriculum", "sampler_strategy", "layer_mode", "autocast_dtype")


def _required_records(cfg: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """The record types a finished log of run ``name`` holds: ``end``, ``test`` when there is a test
    split, and for ``random`` the H1 records written after training (``per_sample_eval``, and
    ``per_sample_grad`` with ``h1.grad_samples``). Until the last of them is written the run is not
    finished: the report must not read a random run whose H1 evaluations are still being computed."""
    kinds = ["end"]
    if cfg["data"]["test_samples"]:
        kinds.append("test")
    if name == "random":
        kinds.append("per_sample_eval")
        if cfg["h1"]["grad_samples"]:
            kinds.append("per_sample_grad")
    return tuple(kinds)


def _log_complete(path: Path, expected: Mapping[str, Any], required: Sequence[str]) -> bool:
    """A finished run: its log has every record type of ``required`` (see :func:`_required_records`).

    Raises:
        PresetError: a finished log of a run with other settings (``expected``): resuming would mix
            two experiments, and overwriting it silently would lose a finished run.
    """
    if not path.is_file():
        return False
    kinds, run = set(), {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    kinds.add(rec.get("type"))
                    if rec.get("type") == "run":
                        run = rec
    except (json.JSONDecodeError, AttributeError):
        return False
    done = all(k in kinds for k in required)
    if done:
        for key in _RESUME_KEYS:
            if key in expected and json.dumps(run.get(key), sort_keys=True) != json.dumps(expected[key], sort_keys=True):
                raise PresetError(f"{path} is a finished run with another {key!r} ({run.get(key)!r}, the preset now "
                                  f"gives {expected[key]!r}); use another --out or delete the old results")
    return done


def _run_plan(cfg: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(seed, name) in seed-major order: a cut-off invocation leaves whole seeds for H2/H3."""
    names = list(cfg["strategies"]) + list(cfg["controls"])
    return [(seed, name) for seed in cfg["seeds"] for name in names]


def _control_table(name: str, signals: Mapping[str, np.ndarray], primary: torch.Tensor,
                   noise_flags: np.ndarray | None = None, noise_seed: int = 0) -> torch.Tensor:
    """The one-column score table of an easy-to-hard control (lower = earlier)."""
    kind = _CONTROL_RUNS[name][2]
    if kind == "anti":
        col = -primary.numpy()
    elif kind == "oracle":
        if noise_flags is None:
            raise ValueError("control oracle: no noise flags (data.noise_fraction is 0)")
        # clean (0) before noisy (1); a seeded jitter in [0, 0.5) puts each class in random order
        jitter = np.random.default_rng(noise_seed + 7919).random(len(noise_flags)) * 0.5
        col = np.asarray(noise_flags, dtype=np.float64) + jitter
    else:
        col = signals[kind]
    col = np.asarray(col, dtype=np.float64)
    if col.ndim == 2:  # anti_curriculum over a [N, L] table: its primary score is the row mean
        col = col.mean(axis=1)
    if not np.isfinite(col).all():
        bad = int(np.flatnonzero(~np.isfinite(col))[0])
        raise ValueError(f"control {name}: the score of training sample {bad} is not finite")
    return torch.from_numpy(col.copy())[:, None]


def inject_noise(samples: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], np.ndarray]:
    """Replace a seeded ``fraction`` of responses by the response of another conversation.

    The positive control's data: a noisy sample keeps its persona and context but answers with the
    gold response of a sample from a different conversation (another opening turn) whose text
    differs, so the pair no longer belongs together. Donors are taken from the clean originals.

    Args:
        samples (Sequence[DialogueSample]): the training samples.
        fraction (float): share of samples to corrupt, in [0, 1).
        seed (int): seed of the choice of samples and donors.

    Returns:
        tuple[list, np.ndarray]: the samples (corrupted ones replaced) and the ``[N]`` int8 flags
        (1 = noisy).

    Raises:
        ValueError: fraction outside [0, 1), or a sample for which no donor from another
            conversation exists.

    Example:
        >>> from torch_curriculum.data import DialogueSample
        >>> s = [DialogueSample(f"s{i}", (), (f"open {i}",), f"reply {i}") for i in range(10)]
        >>> out, flags = inject_noise(s, 0.3, seed=0)
        >>> int(flags.sum()), sum(a.response != b.response for a, b in zip(s, out))
        (3, 3)
    """
    import dataclasses as dc

    if not 0 <= fraction < 1:
        raise ValueError(f"noise fraction must be in [0, 1), got {fraction}")
    n = len(samples)
    flags = np.zeros(n, dtype=np.int8)
    k = round(fraction * n)
    if k == 0:
        return list(samples), flags
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=k, replace=False))

    def conv(x: Any) -> str:
        return x.context[0] if x.context else x.sample_id

    out = list(samples)
    for i in chosen:
        for j in rng.permutation(n):
            if conv(samples[j]) != conv(samples[i]) and samples[j].response.strip() != samples[i].response.strip():
                out[i] = dc.replace(samples[i], response=samples[j].response)
                flags[i] = 1
                break
        else:
            raise ValueError(f"inject_noise: training sample {i} ({samples[i].sample_id}) has no donor response "
                             "from another conversation")
    return out, flags


def resolve_autocast(mode: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype of the generator's training step for ``training.autocast``.

    ``"auto"`` is bf16 on CUDA and on CPUs with bf16 matrix instructions (AMX-BF16 or AVX512-BF16,
    read from ``/proc/cpuinfo``), else None (fp32); ``"bf16"`` forces bf16; ``"none"`` opts out.

    Args:
        mode (str): ``auto`` | ``bf16`` | ``none``.
        device (str | torch.device): where the generator trains.

    Returns:
        torch.dtype | None
    """
    if mode == "none":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16_matmul() else None


_AUTOCAST_NAMES = {"None": None, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}


def pinned_autocast(mode: str, device: str | torch.device, prepared: Mapping[str, Any] | None) -> torch.dtype | None:
    """The experiment's autocast dtype: ``"auto"`` is decided once, by the first preparation.

    ``"auto"`` depends on the machine (bf16 where the CPU or GPU has bf16 matrix units), so shards or
    sessions of one experiment on different machines would train some runs in bf16 and others in
    fp32, and the finished runs would refuse the new ones. The first preparation records its choice
    in ``prepared.json`` (``autocast``); later invocations keep it, warning when this machine would
    pick otherwise. ``"bf16"`` and ``"none"`` mean the same everywhere and are resolved as given.

    Args:
        mode (str): ``training.autocast`` (``auto`` | ``bf16`` | ``none``).
        device (str | torch.device): where the generator trains.
        prepared (Mapping | None): the results directory's earlier ``prepared.json`` for the same
            samples and difficulty files, or None (a fresh experiment).

    Returns:
        torch.dtype | None: None for fp32.

    Raises:
        PresetError: ``prepared["autocast"]`` is not a dtype this function wrote.

    Example:
        >>> pinned_autocast("auto", "cpu", {"autocast": "None"}) is None
        True
    """
    here = resolve_autocast(mode, device)
    if mode != "auto" or not prepared or "autocast" not in prepared:
        return here
    name = prepared["autocast"]
    if name not in _AUTOCAST_NAMES:
        raise PresetError(f"prepared.json: 'autocast' must be one of {sorted(_AUTOCAST_NAMES)}, got {name!r}")
    pinned = _AUTOCAST_NAMES[name]
    if pinned != here:
        logger.warning("training.autocast auto: this experiment was prepared with %s, this machine would pick %s; "
                       "keeping %s so that every run of the experiment trains alike%s",
                       _dtype_label(pinned), _dtype_label(here), _dtype_label(pinned),
                       " (bf16 without bf16 units is emulated: slow)" if pinned is not None and here is None else "")
    return pinned


def _dtype_label(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


def cpu_has_bf16_matmul() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (Linux ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based, as on the command line) -> ``(i - 1, n)``; None -> ``(0, 1)``.

    Raises:
        PresetError: not of the form i/n with 1 <= i <= n.
    """
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise PresetError(f"--shard: expected i/n (e.g. 1/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise PresetError(f"--shard: expected 1 <= i <= n, got {text!r}")
    return i - 1, n


def per_sample_layer_grad_norms(generator: Any, dataset: Any, collate: Any, indices: Sequence[int]) -> np.ndarray:
    """``[len(indices), L]``: the gradient norm of every generator layer for each sample alone.

    Each sample is one forward/backward in eval mode (no dropout); gradients are cleared before
    and after, so a training run is not affected.
    """
    from torch_curriculum.loragen._train import _to

    was = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    rows = []
    try:
        for i in indices:
            generator.zero_grad(set_to_none=True)
            out = generator(**_to(collate([dataset[int(i)]]), device))
            out.lm_loss.backward()
            rows.append(generator.layer_grad_norms().numpy().astype(np.float64))
    finally:
        generator.zero_grad(set_to_none=True)
        generator.train(was)
    return np.stack(rows)


def _run_hosts(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct host the runs trained on, with how many runs (``host`` None: a log older than the field).

    Wall-time measures depend on it; the ``host`` of the provenance is the process that built results.json.
    """
    counts = Counter(json.dumps(r.get("host"), sort_keys=True) for r in records)
    return [{"host": json.loads(k), "runs": n} for k, n in counts.most_common()]


def _grad_subset(cfg: Mapping[str, Any], n: int) -> list[int]:
    g = min(int(cfg["h1"]["grad_samples"]), n)
    return sorted(random.Random(cfg["data"]["split_seed"] + 101).sample(range(n), g)) if g else []


@contextlib.contextmanager
def _exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, waiting for another holder (no-op
    without ``fcntl``). The file stays: unlinking it would let a waiter lock a stale inode."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting: another process holds the %s (%s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".lock")


def _claim_run(log_path: Path) -> tuple[int | None, dict[str, Any] | None]:
    """Take the run's lock: ``(fd, None)`` when this process holds it, ``(None, holder)`` when another does.

    Two processes training one run would write one log at once (a second ``--shard i/n`` with the
    same ``i``, or an unsharded invocation beside the shards): the lines interleave and a "finished"
    log can be garbage. An ``flock`` on ``seed<k>.jsonl.lock`` is released by the OS when its process
    dies, so a crash leaves no stale claim. Without ``fcntl`` (Windows) runs are not locked:
    ``(-1, None)``.
    """
    try:
        import fcntl
    except ImportError:
        return -1, None
    path = _lock_path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None, _read_lock(path) or {}
        try:  # the holder before us may have unlinked the file we opened: lock the one at `path`
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode("utf-8"))
            return fd, None
        os.close(fd)
    raise PresetError(f"could not take the lock {path}: it keeps being replaced")


def _release_run(log_path: Path, fd: int | None) -> None:
    if fd is None or fd < 0:
        return
    _lock_path(log_path).unlink(missing_ok=True)  # unlink before unlocking: a waiter re-checks the inode
    os.close(fd)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _lock_holder(log_path: Path) -> dict[str, Any] | None:
    """Who holds a run's lock, as far as this process can tell (for ``--status``; takes no lock).

    The lock file's ``pid``/``host``; ``alive`` is True/False for a process on this host (checked with
    signal 0) and None for one on another host.
    """
    info = _read_lock(_lock_path(log_path))
    if not info or "pid" not in info:
        return None
    alive = None
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except (PermissionError, OSError, ValueError):
            alive = None
    return {**info, "alive": alive}


def train_all(cfg: Mapping[str, Any], data: Any, edge: Any, difficulty: MetaTokenDifficultyDataset,
              signals: Mapping[str, np.ndarray], out: Path, run_info: Mapping[str, Any], *,
              noise_flags: np.ndarray | None = None, shard: tuple[int, int] = (0, 1),
              stop_after: int | None = None, index_base: int = 0,
              autocast: torch.dtype | str | None = "resolve") -> tuple[int, int]:
    """Train every (seed, strategy) of this shard not finished yet; returns (trained, skipped, busy).

    ``skipped``: runs found finished; ``busy``: runs another live process holds the lock of (see
    :func:`_claim_run`), left to it.

    Args:
        shard (tuple[int, int]): ``(i, n)``, 0-based: this process trains plan entries
            ``i, i + n, i + 2n, ...`` (the plan is seed-major). Default ``(0, 1)``: all.
        stop_after (int | None): return after training this many runs (tests). Default None.
        index_base (int): position of this plan's first run in the whole invocation's plan (the
            shard split is over all budgets together). Default 0.
        autocast (torch.dtype | str | None): the training step's autocast dtype, None for fp32;
            ``"resolve"`` resolves ``training.autocast`` on this machine (:func:`resolve_autocast`).
            :func:`run_preset` passes the experiment's pinned choice (:func:`pinned_autocast`).
            Default ``"resolve"``.
    """
    from torch_curriculum.loragen import LoRAGenConfig, evaluate_per_sample_loss, run_strategy

    tr = cfg["training"]
    ccfg = _curriculum_config(cfg)
    gen_cfg = LoRAGenConfig.from_dict(dict(tr["generator"]))
    eval_bs = tr["eval_batch_size"] or tr["batch_size"]
    device = next(edge.parameters()).device
    if isinstance(autocast, str):
        autocast = resolve_autocast(tr["autocast"], device)
    grad_idx = _grad_subset(cfg, len(data.train))
    heldout = bool(cfg["h1"]["heldout"])
    trained = skipped = busy = 0
    plan = _run_plan(cfg)
    for i, (seed, name) in enumerate(plan):
        if (index_base + i) % shard[1] != shard[0]:
            continue
        log_path = out / "runs" / name / f"seed{seed}.jsonl"
        is_random = name == "random"
        layer_mode = "both"
        if name in CONTROLS:
            strategy, layer_mode, kind = _CONTROL_RUNS[name]
            if kind is None:
                table, overrides = difficulty, None
            else:
                table = _control_table(name, signals, difficulty.difficulty, noise_flags, cfg["data"]["noise_seed"])
                overrides = {"top_k": 1}
        else:
            strategy, table, overrides = name, difficulty, None
        cur = ccfg.to_dict()
        cur["curriculum"]["strategy"], cur["training"]["seed"] = strategy, seed
        expected = {"steps": tr["steps"], "batch_size": tr["batch_size"], "lr": float(tr["lr"]), "seed": seed,
                    "generator": dataclasses.asdict(gen_cfg), "curriculum": cur, "sampler_strategy": strategy,
                    "layer_mode": layer_mode,
                    "autocast_dtype": str(autocast).replace("torch.", "") if autocast else None,
                    **{k: v for k, v in run_info.items() if k.endswith("fingerprint")}}
        if _log_complete(log_path, expected, _required_records(cfg, name)):
            skipped += 1
            continue
        lock, holder = _claim_run(log_path)
        if lock is None:
            busy += 1
            logger.warning("%s seed %d: skipped, another process is training it (pid %s on %s since %s; lock %s)",
                           name, seed, holder.get("pid"), holder.get("host"), holder.get("since"),
                           _lock_path(log_path))
            continue
        try:
            if _log_complete(log_path, expected, _required_records(cfg, name)):
                skipped += 1  # another process finished it while this one checked
                continue
            before: dict[str, Any] = {}

            def at_init(generator: Any, before: dict[str, Any] = before) -> None:
                # H1 (b): every training sample's loss under the zero-initialised generator (= bare edge loss)
                before["loss"] = evaluate_per_sample_loss(generator, data.train, data.collate, batch_size=eval_bs)
                if grad_idx:  # H1 (d): per-sample, per-layer gradient norms at initialisation
                    before["grad"] = per_sample_layer_grad_norms(generator, data.train, data.collate, grad_idx)

            def after(generator: Any, result: Any, log_path: Path = log_path, before: dict[str, Any] = before) -> None:
                # H1 targets from the trained random-order generator (eval mode)
                losses = evaluate_per_sample_loss(generator, data.train, data.collate, batch_size=eval_bs)
                recs = [{"type": "per_sample_eval", "split": "train", "loss": [round(v, 6) for v in losses]},
                        {"type": "per_sample_eval", "split": "train_init",
                         "loss": [round(v, 6) for v in before["loss"]]}]
                if heldout:
                    val = evaluate_per_sample_loss(generator, data.val, data.collate, batch_size=eval_bs)
                    recs.append({"type": "per_sample_eval", "split": "val", "loss": [round(v, 6) for v in val]})
                if grad_idx:
                    end = per_sample_layer_grad_norms(generator, data.train, data.collate, grad_idx)
                    recs.append({"type": "per_sample_grad", "indices": grad_idx,
                                 "init": np.round(before["grad"], 6).tolist(), "end": np.round(end, 6).tolist()})
                with open(log_path, "a", encoding="utf-8") as fh:  # one write: all of them or (killed) none
                    fh.write("".join(json.dumps(rec) + "\n" for rec in recs))

            logger.info("[%d/%d] %s seed %d (%d steps)", i + 1, len(plan), name, seed, tr["steps"])
            t0 = time.perf_counter()
            res = run_strategy(strategy, edge_model=edge, data=data, difficulty=table, config=ccfg, steps=tr["steps"],
                               batch_size=tr["batch_size"], lr=float(tr["lr"]), eval_every=tr["eval_every"], seed=seed,
                               generator_config=gen_cfg, log_path=log_path, sampler_overrides=overrides,
                               run_info={**run_info, "strategy": name, "sampler_strategy": strategy,
                                         "control": CONTROL_INFO.get(name)},
                               on_trained=after if is_random else None, on_init=at_init if is_random else None,
                               layer_mode=layer_mode, autocast_dtype=autocast)
            trained += 1
            logger.info("%s seed %d: final val %.4f, test %s, %.0f s", name, seed, res.final_val_loss,
                        f"{res.test_loss:.4f}" if res.test_loss is not None else "-", time.perf_counter() - t0)
            if stop_after is not None and trained >= stop_after:
                break
        finally:
            _release_run(log_path, lock)
    return trained, skipped, busy


def _random_logs(cfg: Mapping[str, Any], out: Path) -> list[dict[str, Any]]:
    logs = []
    for seed in cfg["seeds"]:
        path = out / "runs" / "random" / f"seed{seed}.jsonl"
        if path.is_file():
            logs.append(_results.read_run_log(path))
    return logs


def _evals(log: Mapping[str, Any], split: str, n: int) -> np.ndarray | None:
    for rec in log["other"]:
        if rec.get("type") == "per_sample_eval" and rec.get("split", "train") == split and len(rec.get("loss", [])) == n:
            return np.asarray(rec["loss"], dtype=np.float64)
    return None


def h1_targets(cfg: Mapping[str, Any], out: Path, n: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-training-sample H1 targets from the finished random-order runs (NaN where never measured).

    ``loss_after_training`` and ``learnability`` (loss under the zero-initialised generator minus
    loss after training, i.e. how much a sample's loss the random-order training removed) are
    measured on every training sample in eval mode. ``train_loss_mean`` is the old target, kept
    only as what it is: the training-time loss of the samples drawn, which for a zero-initialised
    generator and a short budget is close to the bare edge loss by construction.
    """
    from .metrics import per_sample_mean_loss

    idx, loss, after, init = [], [], [], []
    for log in _random_logs(cfg, out):
        if log["per_sample"] is not None:
            idx.append(log["per_sample"]["indices"])
            loss.append(log["per_sample"]["losses"])
        a, b = _evals(log, "train", n), _evals(log, "train_init", n)
        if a is not None:
            after.append(a)
        if a is not None and b is not None:
            init.append(b - a)
    targets, desc = {}, {}
    if after:
        targets["loss_after_training"] = np.nanmean(np.stack(after), axis=0)
        desc["loss_after_training"] = ("per-sample LM loss on the training set under the trained random-order "
                                       f"generator (eval mode), mean over {len(after)} seeds")
    if init:
        targets["learnability"] = np.nanmean(np.stack(init), axis=0)
        desc["learnability"] = ("(b) learnability: loss under the zero-initialised generator (= bare edge loss) "
                                f"minus loss after random-order training, per training sample, mean over {len(init)} "
                                "seeds")
    if idx:
        targets["train_loss_mean"] = per_sample_mean_loss(np.concatenate(idx), np.concatenate(loss), n)
        desc["train_loss_mean"] = ("OLD TARGET, kept only as what it is: the per-sample training loss averaged over "
                                   f"the steps the sample was drawn in the random-order runs ({len(idx)} seeds); for a "
                                   "zero-initialised generator and a short budget it is close to the bare edge loss "
                                   "by construction, so edge_loss_before correlates with it almost trivially")
    return targets, desc


def h1_heldout(cfg: Mapping[str, Any], out: Path, n_val: int, signals: Mapping[str, np.ndarray],
               info: Mapping[str, Any]) -> dict[str, Any] | None:
    """H1 target (a): per-sample loss on the held-out validation samples under the trained random generator."""
    vals = [v for v in (_evals(log, "val", n_val) for log in _random_logs(cfg, out)) if v is not None]
    if not vals or not signals:
        return None
    target = np.nanmean(np.stack(vals), axis=0)
    h = _results._h1(signals, {"heldout_loss": target}, "heldout_loss", info, cfg["h1"]["n_boot"],
                     float(cfg["h1"]["confidence"]), cfg["seeds"][0])
    h["targets"]["heldout_loss"] = ("(a) per-sample loss of the held-out validation samples under the trained "
                                    f"random-order generator (mean over {len(vals)} seeds); the signals are computed "
                                    "on the validation samples themselves (their own anchors and normalisation)")
    return _results.jsonable(h)


def h1_layers(cfg: Mapping[str, Any], out: Path, layer_diffs: np.ndarray) -> dict[str, Any] | None:
    """H1 target (d): per layer j, Spearman of the per-sample gradient norm of generator layer j with d_j.

    At initialisation and at the end of the random-order runs (gradient norms averaged over seeds).
    """
    from .metrics import rank_correlation

    init, end, idx = [], [], None
    for log in _random_logs(cfg, out):
        for rec in log["other"]:
            if rec.get("type") == "per_sample_grad":
                idx = rec["indices"]
                init.append(np.asarray(rec["init"], dtype=np.float64))
                end.append(np.asarray(rec["end"], dtype=np.float64))
    if not init:
        return None
    d = np.asarray(layer_diffs, dtype=np.float64)[np.asarray(idx)]
    res: dict[str, Any] = {"n_samples": len(idx), "n_seeds": len(init), "layers": int(d.shape[1]),
                           "description": "(d) Spearman, per layer j, between the per-sample gradient norm of "
                                          "generator layer j (one sample per backward, eval mode) and the sample's "
                                          "normalised meta-token difference d_j; at initialisation and after the "
                                          "random-order run"}
    for when, arrs in (("init", init), ("end", end)):
        g = np.mean(np.stack(arrs), axis=0)
        rows = []
        for j in range(d.shape[1]):
            if np.ptp(g[:, j]) == 0 or np.ptp(d[:, j]) == 0:
                rows.append({"spearman": None, "ci95": None, "p": None})
                continue
            r = rank_correlation(d[:, j], g[:, j], n_boot=cfg["h1"]["n_boot"],
                                 confidence=float(cfg["h1"]["confidence"]), seed=cfg["seeds"][0])
            rows.append({"spearman": r["spearman"], "ci95": r["spearman_ci95"], "p": r["spearman_p"]})
        res[when] = rows
    return _results.jsonable(res)


def h1_signals(cfg: Mapping[str, Any], files: Mapping[tuple[str, str], MetaTokenDifficultyDataset],
               cheap: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """Every meta-token aggregate x metric x pooling, plus the cheap signals."""
    signals, info = {}, {}
    for (pooling, metric), ds in files.items():
        xm = pooling == "crossmodel"
        for agg in AGGREGATE_KEYS:
            name = f"xm_{metric}_{agg}" if xm else f"meta_{metric}_{pooling}_{agg}"
            signals[name] = ds.scores(agg).numpy().astype(np.float64)
            label = f"top{ds.top_k}_mean" if agg == "topk_mean" else agg
            what = (f"cross-model signal {metric} (torch_curriculum.crossmodel, reads the response)" if xm
                    else f"meta-token difference: {metric} distance, {pooling} pooling")
            info[name] = {"kind": "crossmodel" if xm else "meta_token",
                          "description": f"{what}, {label} over rank-normalised layers"}
    descriptions = {
        "response_length": "response length in edge tokens",
        "edge_loss_before": "bare edge model's response loss (nats/token) before training",
        "cloud_minus_edge_loss": "cloud response loss minus edge response loss (each with its own tokenizer)",
        "ifd": "IFD (Li et al. 2024) on the edge model: loss(response | prompt) / loss(response alone)",
    }
    for name, text in descriptions.items():
        signals[name] = np.asarray(cheap[name], dtype=np.float64)
        info[name] = {"kind": "control", "description": text}
    return signals, info


# ---------------------------------------------------------------------------------------------
# The whole preset
# ---------------------------------------------------------------------------------------------


def _load_difficulty(cfg: Mapping[str, Any], ddir: Path) -> dict[tuple[str, str], MetaTokenDifficultyDataset]:
    files = {}
    for pooling in cfg["h1"]["poolings"]:
        for metric in cfg["h1"]["metrics"]:
            path = ddir / f"{pooling}_{metric}.safetensors"
            if path.is_file():
                files[(pooling, metric)] = MetaTokenDifficultyDataset(path)
    for x in cfg["h1"].get("signals", []):
        if _xm_path(ddir, x).is_file():
            files[("crossmodel", x)] = MetaTokenDifficultyDataset(_xm_path(ddir, x))
    return files


def _load_signals(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files if k != "fingerprint"}


def _earlier_preparation(path: Path, prepared: Mapping[str, Any]) -> dict[str, Any] | None:
    """The existing ``prepared.json`` when it describes the same samples and difficulty files, else None."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict):
        return None
    same = all(old.get(k) == prepared[k] for k in ("samples_fingerprint", "difficulty_fingerprint"))
    return old if same else None


def _keep_first_preparation(prepared: dict[str, Any], earlier: Mapping[str, Any] | None) -> None:
    """Keep the timings of the preparation that did the work when a resumed or sharded run reopens it.

    A second invocation finds the difficulty files, signals and cloud states cached and "prepares" in
    seconds; writing those seconds over the first invocation's would make the provenance claim the
    preparation cost nothing. Same data and difficulty (``earlier``, from :func:`_earlier_preparation`):
    the first ``timings_s``/``started`` stay, this invocation's go to ``reopened``, and keys this
    invocation does not write are kept.
    """
    if earlier and "timings_s" in earlier:
        prepared["reopened"] = {"started": prepared["started"], "timings_s": prepared["timings_s"]}
        prepared["timings_s"], prepared["started"] = earlier["timings_s"], earlier.get("started", prepared["started"])
        for key, value in earlier.items():  # e.g. a note on how the first timings were obtained
            prepared.setdefault(key, value)


#: keys a later invocation may change in an existing results directory: they add or leave out
#: runs, or do not touch what a run computes
_EXTENDABLE_KEYS = ("seeds", "strategies", "controls", "threads", "description")


def _config_differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted paths at which two JSON-like configurations differ (a missing key counts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in list(old) + [k for k in new if k not in old]:
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                diffs.append(path)
            else:
                diffs += _config_differences(old[key], new[key], path)
        return diffs
    return [] if old == new else [where]


def _check_same_experiment(path: Path, cfg: Mapping[str, Any]) -> None:
    """Refuse to rewrite ``config.json`` of a results directory made with other settings.

    The report reads ``config.json``; overwriting it with settings the finished runs were not made
    with would make the report describe them wrongly. Seeds, strategies, controls, threads and the
    description may change (that extends or narrows the plan); anything else is an error naming the
    keys.

    Raises:
        PresetError: ``path`` holds a configuration that differs elsewhere.
    """
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PresetError(f"{path} is not readable JSON ({e}); it describes the runs in {path.parent}: "
                          "restore it or use another --out") from None
    new = json.loads(json.dumps(_results.jsonable(cfg)))
    diffs = [d for d in _config_differences(old, new) if d.split(".")[0] not in _EXTENDABLE_KEYS]
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise PresetError(f"{path.parent} holds an experiment with other settings ({shown} differ from "
                          "this preset); use another --out, or delete that directory's results to start over")


def run_preset(cfg: Mapping[str, Any], out: str | Path, *, report: bool = True, plots: bool = True,
               config_path: str | None = None, shard: tuple[int, int] = (0, 1),
               stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) a validated preset, then write ``results.json`` (+ the report).

    Everything a later :func:`collect_results` needs is written under ``out``: the resolved
    preset (``config.json``), the data/model provenance (``prepared.json``), the difficulty files,
    the cheap signals (``signals.npz``), the noise flags and one JSONL log per (strategy, seed).

    Args:
        cfg (Mapping): from :func:`load_preset` / :func:`validate_preset`.
        out (str | Path): results directory.
        report (bool): write ``report.md`` (and plots). Default True.
        plots (bool): PNG plots with the report. Default True.
        config_path (str | None): recorded in the provenance.
        shard (tuple[int, int]): ``(i, n)``, 0-based: train only every n-th run of the plan starting
            at i (see :func:`parse_shard`). Default ``(0, 1)``: every run.
        stop_after (int | None): stop after training this many runs (tests of resuming). Default None.

    Returns:
        dict: ``results`` (path), ``report`` (path or None), ``runs_trained``, ``runs_skipped`` (found
        finished), ``runs_busy`` (left to another process training them), ``wall_s``.
    """
    from torch_curriculum.data import data_fingerprint as samples_fingerprint
    from torch_curriculum.loragen import prepare_generator_data

    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    _check_same_experiment(out / "config.json", cfg)
    # the preset's own key order: budgets run (and --shard splits them) in the order the preset lists them
    atomic_write_text(out / "config.json", json.dumps(_results.jsonable(cfg), indent=1))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train, val, test, data_desc, data_file = load_splits(cfg["data"])
    noise_flags = None
    if cfg["data"]["noise_fraction"] > 0:
        train, noise_flags = inject_noise(train, float(cfg["data"]["noise_fraction"]), cfg["data"]["noise_seed"])
        (out / "arrays").mkdir(exist_ok=True)
        with atomic_write(out / "arrays" / "noise_flags.npy") as f:  # shards started together write it too
            np.save(f, noise_flags)
        data_desc += (f"; {int(noise_flags.sum())} of {len(train)} training responses replaced by a response "
                      f"from another conversation (noise seed {cfg['data']['noise_seed']})")
    fp = samples_fingerprint(list(train) + list(val) + list(test))
    logger.info("data: %s: %d train / %d val / %d test", data_desc, len(train), len(val), len(test))
    texts = [t for s in list(train) + list(val) + list(test) for t in (*s.persona, *s.context, s.response)]
    layout = ["Persona: Dialogue: You:", _curriculum_config(cfg).meta_token.system_prompt]
    models = load_models(cfg["models"], texts + layout)
    timings["load_s"] = time.perf_counter() - t0

    # --shard processes started together on a fresh --out: one prepares, the others wait and reuse it
    # (two at once deleted each other's precompute work files)
    with _exclusive(out / ".prepare.lock", f"preparation of {out}"):
        t0 = time.perf_counter()
        files = precompute_difficulty(cfg, train, models, out)
        timings["precompute_s"] = time.perf_counter() - t0
        mt = _curriculum_config(cfg).meta_token
        primary = files[(mt.pooling, mt.distance_metric)]

        t0 = time.perf_counter()
        signal_key = hashlib.sha256(json.dumps({"samples": fp, "models": models["info"], "max_length": cfg["data"]["max_length"],
                                                "max_context_turns": mt.max_context_turns}, sort_keys=True,
                                               default=str).encode()).hexdigest()
        cheap = compute_signals(cfg, train, models, out, signal_key)
        timings["signals_s"] = time.perf_counter() - t0
        if cfg["h1"]["heldout"]:  # H1 (a): the same signals on the held-out validation samples
            t0 = time.perf_counter()
            (out / "heldout").mkdir(exist_ok=True)
            precompute_difficulty(cfg, val, models, out / "heldout", heldout=True)
            compute_signals(cfg, val, models, out / "heldout", signal_key + "-val")
            timings["heldout_signals_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        edge, edge_tok = models["edge"]
        cloud, cloud_tok = models["cloud"]
        data = prepare_generator_data(train, val, test, edge_tokenizer=edge_tok, cloud_model=cloud,
                                      cloud_tokenizer=cloud_tok, max_length=cfg["data"]["max_length"],
                                      max_context_turns=mt.max_context_turns,
                                      cloud_cache_path=out / "cloud_states.safetensors", progress=False)
        timings["cloud_states_s"] = time.perf_counter() - t0
        del cloud  # its states are cached; training needs only the edge model

        prepared = {"data": data_desc, "samples_fingerprint": fp, "data_file": str(data_file) if data_file else None,
                    "splits": {"train": len(train), "val": len(val), "test": len(test)}, "models": models["info"],
                    "timings_s": {k: round(v, 1) for k, v in timings.items()}, "started": started,
                    "difficulty_fingerprint": primary.metadata.get("run_key")}
        earlier = _earlier_preparation(out / "prepared.json", prepared)
        autocast = pinned_autocast(cfg["training"]["autocast"], next(edge.parameters()).device, earlier)
        prepared["autocast"] = str(autocast)
        _keep_first_preparation(prepared, earlier)
        atomic_write_text(out / "prepared.json", json.dumps(prepared, indent=1))

    t0 = time.perf_counter()
    run_info = {"preset": cfg["preset"], "data": data_desc, "data_fingerprint": fp,
                "difficulty_file": str(Path(primary.path).relative_to(out)),
                "difficulty_fingerprint": primary.metadata.get("run_key")}
    trained = skipped = busy = base = 0
    for budget in budget_names(cfg):
        bcfg = budget_config(cfg, budget)
        left = None if stop_after is None else stop_after - trained
        if left is not None and left <= 0:
            break
        t, k, b = train_all(bcfg, data, edge, primary, cheap, run_root(out, budget),
                         {**run_info, "budget": budget}, noise_flags=noise_flags, shard=shard, stop_after=left,
                         index_base=base, autocast=autocast)
        trained, skipped, busy, base = trained + t, skipped + k, busy + b, base + len(_run_plan(bcfg))
    training_s = time.perf_counter() - t0
    summary = {"results": None, "report": None}
    if any(_plan_status(budget_config(cfg, b), run_root(out, b))["complete"] for b in budget_names(cfg)):
        summary = collect_results(out, report=report, plots=plots, config_path=config_path,
                                  extra_provenance={"runs_trained_this_invocation": trained, "runs_resumed": skipped,
                                                    "training_s_this_invocation": round(training_s, 1)})
    return {**summary, "runs_trained": trained, "runs_skipped": skipped, "runs_busy": busy,
            "wall_s": round(time.perf_counter() - t_start, 1)}


def _plan_status(cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    done, missing = [], []
    for seed, name in _run_plan(cfg):
        state = _log_progress(out / "runs" / name / f"seed{seed}.jsonl", _required_records(cfg, name))[0]
        (done if state == "finished" else missing).append((seed, name))
    return {"complete": len(done), "missing": missing, "done": done}


def _log_progress(path: Path, required: Sequence[str]) -> tuple[str, int | None, float | None, float | None]:
    """(state, last trained step, its wall time in s, seconds since the log was written) of one run's log.

    ``finished`` needs every record type of ``required``; a random run past its ``end`` record but
    still computing its H1 evaluations is ``partial``.
    """
    if not path.is_file():
        return "missing", None, None, None
    last_train, end = None, None
    kinds: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            head = line[:40]
            if '"type": "train"' in head:
                last_train = line
                continue
            for k in ("end", "test", "per_sample_eval", "per_sample_grad"):
                if f'"type": "{k}"' in head:
                    kinds.add(k)
                    if k == "end":
                        end = line
    finished = all(k in kinds for k in required)
    step = wall = None
    try:
        if end is not None:  # a finished run: its whole training time
            rec = json.loads(end)
            step, wall = int(rec["steps"]), rec.get("wall_time")
        elif last_train is not None:
            rec = json.loads(last_train)
            step, wall = int(rec["step"]), rec.get("wall_time")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        step = wall = None  # a torn last line of a run killed mid-write
    return ("finished" if finished else "partial"), step, wall, round(time.time() - path.stat().st_mtime, 1)


def experiment_status(out: str | Path, *, shards: int = 1) -> dict[str, Any]:
    """Which runs of an experiment directory have finished, are under way (or were cut off), or wait.

    Reads only ``config.json`` and the run logs (no model, nothing written), so it is safe while
    ``--shard`` processes are training into the same directory. A ``partial`` run has a log that
    lacks some of its final records (``end``, ``test``, and for ``random`` the H1 evaluations written
    after training): either a process is training it (``holder``; ``idle_s`` small) or one was
    stopped, and the next ``torch-curriculum experiment`` retrains it from the start.

    Args:
        out (str | Path): the ``--out`` directory of ``torch-curriculum experiment``.
        shards (int): with ``n`` > 1 each run also names the ``--shard i/n`` that trains it.
            Default 1.

    Returns:
        dict: ``dir``, ``preset``, ``shards``, ``planned``, ``finished``, ``left_s`` (per ``--shard
        i/n``: the training time its unfinished runs still need, each estimated from its own pace
        if under way, else from the finished runs of its strategy in its budget), ``left_unknown_runs``
        (runs with no estimate yet) and ``budgets``: per budget
        (``budget`` None without budgets) ``planned``, ``finished``, ``partial``, ``missing`` and
        ``runs`` in plan order, each ``{"index", "seed", "strategy", "state", "step", "steps",
        "idle_s", "eta_s", "holder", "duration_s", "left_s", "shard", "log"}`` (``eta_s``: a partial
        run's remaining time at its pace so far; ``duration_s``: a finished run's training time;
        ``left_s``: the time a run still needs, see below; ``holder``: the process whose lock is on an
        unfinished run, ``{"pid", "host", "since", "alive"}`` with ``alive`` None for another host,
        else None; ``index`` 1-based within the budget, as the progress log counts
        ``[index/planned]``; ``shard`` splits the plan of all budgets together, as ``--shard`` does;
        ``step`` the last trained step, None before the first; ``idle_s`` seconds since the log
        was last written, None without a log).

    Raises:
        PresetError: ``out`` has no (valid) ``config.json``, or ``shards`` < 1.

    Example:
        >>> st = experiment_status("results/cpu", shards=2)  # doctest: +SKIP
        >>> [(r["strategy"], r["seed"]) for b in st["budgets"]  # doctest: +SKIP
        ...  for r in b["runs"] if r["state"] != "finished"]
        [('easy_to_hard', 3), ('dynamic', 3)]
    """
    out = Path(out)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise PresetError(f"shards must be a positive int, got {shards!r}")
    if not (out / "config.json").is_file():
        raise PresetError(f"{out} has no config.json: not a results directory written by `torch-curriculum "
                          "experiment` (or it has not started)")
    full = validate_preset(json.loads((out / "config.json").read_text(encoding="utf-8")))
    budgets, base = [], 0
    for budget in budget_names(full):
        cfg, root = budget_config(full, budget), run_root(out, budget)
        runs = []
        for i, (seed, name) in enumerate(_run_plan(cfg)):
            path = root / "runs" / name / f"seed{seed}.jsonl"
            state, step, wall, idle = _log_progress(path, _required_records(cfg, name))
            holder = _lock_holder(path) if state != "finished" else None
            steps = cfg["training"]["steps"]
            # at this run's own pace so far (evaluations included); None before its first step
            eta = (round(wall / step * (steps - step), 1) if state == "partial" and step and wall is not None
                   else None)
            runs.append({"index": i + 1, "seed": seed, "strategy": name, "state": state, "step": step,
                         "steps": steps, "idle_s": idle, "eta_s": eta, "holder": holder,
                         "duration_s": round(wall, 1) if state == "finished" and wall is not None else None,
                         "shard": f"{(base + i) % shards + 1}/{shards}", "log": path.relative_to(out).as_posix()})
        _estimate_left(runs)
        counts = Counter(r["state"] for r in runs)
        budgets.append({"budget": budget, "planned": len(runs), "finished": counts["finished"],
                        "partial": counts["partial"], "missing": counts["missing"], "runs": runs})
        base += len(runs)
    left: dict[str, float] = {f"{k + 1}/{shards}": 0.0 for k in range(shards)}
    unknown = 0
    for r in (r for b in budgets for r in b["runs"] if r["state"] != "finished"):
        if r["left_s"] is None:
            unknown += 1
        else:
            left[r["shard"]] += r["left_s"]
    return {"dir": str(out), "preset": full["preset"], "shards": shards, "planned": base,
            "finished": sum(b["finished"] for b in budgets), "budgets": budgets,
            "left_s": {k: round(v, 1) for k, v in left.items()}, "left_unknown_runs": unknown}


def _estimate_left(runs: list[dict[str, Any]]) -> None:
    """Set each run's ``left_s``: the training time it still needs, estimated from finished runs.

    A run under way: its own pace (``eta_s``); one whose process is gone or that has not started:
    the mean duration of the finished runs of its strategy in this budget, else of all finished
    runs in this budget (None when none has finished). Finished runs: 0.
    """
    done: dict[str, list[float]] = {}
    for r in runs:
        if r["duration_s"] is not None:
            done.setdefault(r["strategy"], []).append(r["duration_s"])
    every = [d for ds in done.values() for d in ds]
    for r in runs:
        if r["state"] == "finished":
            r["left_s"] = 0.0
            continue
        gone = r["holder"] is not None and r["holder"].get("alive") is False
        if r["state"] == "partial" and r["eta_s"] is not None and not gone:
            r["left_s"] = r["eta_s"]
            continue
        same = done.get(r["strategy"]) or every
        r["left_s"] = round(float(np.mean(same)), 1) if same else None


def collect_results(out: str | Path, *, report: bool = True, plots: bool = True, config_path: str | None = None,
                    extra_provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build ``results.json`` (and the report) from what the runs of a results directory wrote.

    Needs no model: reads ``config.json``, ``prepared.json``, the difficulty files, ``signals.npz``,
    the noise flags and every finished run log (runs of several ``--shard`` processes or machines
    merge here). Seeds whose ``random`` run has not finished are left out (comparisons are paired
    by seed); unfinished runs are listed in ``provenance.runs_missing``.

    Args:
        out (str | Path): the results directory of :func:`run_preset`.
        report (bool): also write ``report.md``. Default True.
        plots (bool): PNGs with the report. Default True.
        config_path (str | None): recorded in the provenance.
        extra_provenance (Mapping | None): merged into the provenance.

    Returns:
        dict: ``results`` and ``report`` paths.

    Raises:
        PresetError: the directory lacks ``config.json`` / ``prepared.json`` or has no finished
            random-order run.
    """
    out = Path(out)
    for name in ("config.json", "prepared.json"):
        if not (out / name).is_file():
            raise PresetError(f"{out} has no {name}: not a results directory written by `torch-curriculum "
                              "experiment` (or its preparation has not finished)")
    full = validate_preset(json.loads((out / "config.json").read_text(encoding="utf-8")))
    prep = json.loads((out / "prepared.json").read_text(encoding="utf-8"))
    written: dict[str, Any] = {}
    for budget in budget_names(full):
        cfg, root = budget_config(full, budget), run_root(out, budget)
        if not _plan_status(cfg, root)["complete"]:
            continue
        res = _collect_one(out, root, cfg, prep, budget, report=report, plots=plots, config_path=config_path,
                           extra_provenance=extra_provenance)
        written[budget or ""] = res
    if not written:
        raise PresetError(f"{out}: no finished run yet; nothing to report")
    if list(written) == [""]:
        return written[""]
    return {"results": {b: r["results"] for b, r in written.items()},
            "report": {b: r["report"] for b, r in written.items()}}


def _collect_one(out: Path, root: Path, cfg: Mapping[str, Any], prep: Mapping[str, Any], budget: str | None, *,
                 report: bool, plots: bool, config_path: str | None,
                 extra_provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    status = _plan_status(cfg, root)
    seeds = [s for s in cfg["seeds"] if (s, "random") in status["done"]]
    if not seeds:
        return {"results": None, "report": None, "note": f"{root}: no finished random-order run yet"}
    records = []
    for seed, name in status["done"]:
        if seed in seeds:
            path = root / "runs" / name / f"seed{seed}.jsonl"
            records.append(_results.run_record_from_log(path, name, seed, results_dir=root))
    an = cfg["analysis"]
    if an["target"] == "pooled":
        grids = {tuple(r["val_steps"]) for r in records}
        if len(grids) != 1:
            raise PresetError(f"{out}: the runs were evaluated at different steps; a pooled target needs one schedule")
        steps = np.asarray(records[0]["val_steps"], dtype=np.float64)
        pooled = np.mean([r["val_losses"] for r in records], axis=0)
        at = an["target_fraction"] * steps[-1]
        target_loss = float(np.interp(at, steps, pooled))
        rule, tdesc = "fixed", (f"pooled: the mean validation curve of all {len(records)} finished runs (every strategy "
                                f"and seed) at {an['target_fraction']:.0%} of the budget (step {at:g}) = "
                                f"{target_loss:.4f}; one fixed level for every run, favouring no strategy; crossings "
                                "interpolated linearly between evaluations")
    else:
        rule, target_loss = "baseline_final_per_seed", None
        tdesc = ("baseline: random's own final validation loss on the same seed (favours the baseline, which always "
                 "reaches it); crossings interpolated between evaluations")
    ddir = out / "difficulty"
    files = _load_difficulty(cfg, ddir)
    mt = _curriculum_config(cfg).meta_token
    primary = files[(mt.pooling, mt.distance_metric)]
    cheap = _load_signals(out / "signals.npz") or {}
    n = prep["splits"]["train"]
    targets, target_desc = h1_targets(cfg, root, n)
    signals, signal_info = h1_signals(cfg, files, cheap)
    noise_path = out / "arrays" / "noise_flags.npy"
    noise_flags = np.load(noise_path) if noise_path.is_file() else None
    extra: dict[str, Any] = {}
    hv = _load_signals(out / "heldout" / "signals.npz")
    if cfg["h1"]["heldout"] and hv is not None:
        hsig, hinfo = h1_signals(cfg, _load_difficulty(cfg, out / "heldout" / "difficulty"), hv)
        extra["h1_heldout"] = h1_heldout(cfg, root, prep["splits"]["val"], hsig, hinfo)
    extra["h1_layers"] = h1_layers(cfg, root, primary.layer_diffs.numpy())
    noise_signals = dict(signals)
    if noise_flags is not None:
        for t in ("loss_after_training", "learnability"):
            if t in targets:
                noise_signals[f"target:{t}"] = targets[t]
                signal_info[f"target:{t}"] = {"kind": "learned", "description": target_desc[t]}
    h1_primary = next((t for t in ("learnability", "loss_after_training", "train_loss_mean") if t in targets), None)
    arrays = _results.save_arrays(root, layer_diffs=primary.layer_diffs, layer_diffs_raw=primary.raw_layer_diffs,
                                  h1_samples={**signals, **targets})
    if noise_flags is not None:
        np.save(root / "arrays" / "noise_flags.npy", noise_flags)
        arrays["noise_flags"] = "arrays/noise_flags.npy"
    diff_paths = [files[k].path for k in sorted(files)]
    provenance = {
        "config": cfg, "config_file": config_path, "seed": cfg["seeds"][0], "seeds": list(cfg["seeds"]),
        "seeds_compared": seeds,
        "data_fingerprint": _results.data_fingerprint(*([prep["data_file"]] if prep["data_file"] else []),
                                                      *diff_paths),
        "samples_fingerprint": prep["samples_fingerprint"], "data": prep["data"], "splits": prep["splits"],
        "models": prep["models"], "difficulty_files": [Path(os.path.relpath(p, root)).as_posix() for p in diff_paths],
        "budget": budget,
        "primary_difficulty": {"pooling": mt.pooling, "metric": mt.distance_metric,
                               "score": f"top{mt.top_k}_mean" if mt.primary_score == "topk_mean" else mt.primary_score},
        "controls": {c: CONTROL_INFO[c] for c in cfg["controls"]}, "autocast": prep.get("autocast"),
        "host": host_info(), "run_hosts": _run_hosts(records),
        "timings_s": prep["timings_s"], "started": prep["started"],
        "runs_complete": status["complete"], "runs_missing": [f"{nm}/seed{sd}" for sd, nm in status["missing"]],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **dict(extra_provenance or {}),
    }
    doc = _results.build_results(records, signals=signals if targets else None, targets=targets or None, primary_target=h1_primary,
                                 signal_info=signal_info, target_descriptions=target_desc, provenance=provenance,
                                 arrays=arrays, preset=cfg["preset"] + (f" ({budget} budget)" if budget else ""), n_boot=cfg["h1"]["n_boot"],
                                 confidence=float(cfg["h1"]["confidence"]), seed=cfg["seeds"][0],
                                 target_rule=rule, target_loss=target_loss, interpolate=True,
                                 power=float(an["power"]), target_description=tdesc, noise_flags=None, extra=extra)
    if noise_flags is not None:
        doc["noise"] = _results.jsonable(_results._noise(
            noise_signals, noise_flags, signal_info, doc["h2"], "oracle", cfg["h1"]["n_boot"],
            float(cfg["h1"]["confidence"]), 0.05, cfg["seeds"][0]))
    res_path = _results.write_results(root, doc)
    rep = _report.build_report(root, plots=plots) if report else None
    return {"results": str(res_path), "report": str(rep) if rep else None}


def resolve_preset(config: str | Path, *, data: str | None = None, seeds: str | None = None,
                   threads: int | None = None) -> tuple[dict[str, Any], Path]:
    """Load a shipped preset by name or a YAML file, with command-line overrides applied.

    Raises:
        FileNotFoundError: no such preset or file. PresetError: invalid content.
    """
    from . import preset_path

    path = preset_path(config)
    cfg = load_preset(path)
    if data is not None:
        cfg["data"]["source"] = str(data)
    if seeds is not None:
        cfg["seeds"] = [int(s) for s in seeds.split(",") if s.strip()]
    if threads is not None:
        cfg["threads"] = threads
    return validate_preset(cfg), path
