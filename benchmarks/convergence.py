"""The seed's experiments (issue 6): every curriculum strategy vs. random, over seeds, with H1-H3.

Usage::

    python benchmarks/convergence.py --preset cpu        # bundled SmolLM2 + Qwen2.5, chitchat, ~60 min on 2 cores
    python benchmarks/convergence.py --preset cpu --data ../shared/data/synthetic-persona-chat/Synthetic-Persona-Chat_valid.csv
    python benchmarks/convergence.py --preset gpu --data personachat/train_self_original.txt
    python benchmarks/convergence.py --preset smoke --data dialogues.jsonl   # tiny random models, seconds
    python benchmarks/report.py benchmarks/results/cpu   # regenerate the report from the results only

A preset is a YAML file in ``benchmarks/configs/`` (``--config`` takes any other), loaded strictly
(an unknown key is an error naming it). What one invocation does, writing under
``benchmarks/results/<preset>/`` (``--out``):

1. reads the dialogues and draws the train / validation / test splits (test is used for nothing
   but the final test loss);
2. loads the edge and cloud models (bundled GGUFs, Hugging Face ids, or tiny random models);
3. precomputes the meta-token differences of the training split once per pooling and derives the
   distances of every metric from the SAME pooled vectors (``difficulty/<pooling>_<metric>.safetensors``;
   the shards of one pooling are kept in ``difficulty/work_<pooling>`` and only merged per metric);
4. computes the cheap per-sample signals with :mod:`torch_curriculum.signals` (response length,
   bare edge loss, cloud-minus-edge loss gap, IFD), cached in ``signals.npz``;
5. trains the reference LoRA-Gen generator under every strategy and control, for every seed, with
   the same initialisation per seed, budget, data and evaluation schedule
   (``torch_curriculum.loragen._experiment.run_strategy``); each run's log is
   ``runs/<strategy>/seed<k>.jsonl``. A finished run (its log has its ``test`` and ``end`` records,
   and for ``random`` the per-sample loss after training) is never redone, so an interrupted
   invocation resumes where it stopped;
6. builds ``results.json`` with ``benchmarks/_results.build_results`` (H1/H2/H3, runs, per-layer,
   provenance) and writes ``report.md`` + ``plots/`` with ``benchmarks/report.py``.

Controls (easy-to-hard without the cloud model, and the reverse of ours): ``ctrl_length`` (easy to
hard by response length), ``ctrl_edge_loss`` (by the bare edge model's loss before training) and
``anti_curriculum`` (hard to easy by the primary meta-token score); each is ``EasyToHardSampler`` over
a one-column score table (``top_k=1``).

The last line printed is one JSON object: ``results``, ``report``, ``runs_trained``,
``runs_skipped``, ``wall_s``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import platform
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

import _results  # noqa: E402
import report as _report  # noqa: E402

from torch_curriculum import CurriculumConfig, MetaTokenDifficultyDataset  # noqa: E402
from torch_curriculum.config import STRATEGIES, canonical_strategy  # noqa: E402
from torch_curriculum.difficulty import METRICS  # noqa: E402

__all__ = ["CONTROLS", "PresetError", "load_preset", "main", "run_preset", "validate_preset"]

logger = logging.getLogger("convergence")

CONTROLS = ("ctrl_length", "ctrl_edge_loss", "anti_curriculum")
CONTROL_INFO = {
    "ctrl_length": "easy to hard by response length (edge tokens); no cloud model",
    "ctrl_edge_loss": "easy to hard by the bare edge model's response loss before training; no cloud model",
    "anti_curriculum": "hard to easy by the primary meta-token score (the reverse of easy_to_hard)",
}
AGGREGATE_KEYS = ("mean", "weighted_mean", "max", "topk_mean")

# The preset schema: section -> {key: (type(s), default)}; REQUIRED marks keys without a default.
REQUIRED = object()
_SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "models": {"edge": (dict, REQUIRED), "cloud": (dict, REQUIRED), "dtype": (str, "float32"),
               "device": ((str, type(None)), None)},
    "data": {"source": (str, "chitchat"), "train_samples": (int, REQUIRED), "val_samples": (int, REQUIRED),
             "test_samples": (int, REQUIRED), "max_length": (int, 128), "split_seed": (int, 0)},
    "training": {"steps": (int, REQUIRED), "batch_size": (int, 8), "lr": ((int, float), 2e-3),
                 "eval_every": (int, REQUIRED), "eval_batch_size": ((int, type(None)), None),
                 "generator": (dict, {})},
    "h1": {"metrics": (list, list(METRICS)), "poolings": (list, ["mean"]), "n_boot": (int, 1000),
           "signal_batch_size": (int, 8), "confidence": ((int, float), 0.95)},
}
_TOP = {"preset": (str, REQUIRED), "description": (str, ""), "seeds": (list, REQUIRED),
        "strategies": (list, list(STRATEGIES)), "controls": (list, list(CONTROLS)),
        "threads": ((int, type(None)), None), "curriculum": (dict, {}), **{k: (dict, REQUIRED) for k in _SCHEMA}}
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
    mt = cur.meta_token
    if mt.distance_metric not in h1["metrics"]:
        raise PresetError(f"h1.metrics: must include the curriculum's metric {mt.distance_metric!r}")
    if mt.pooling not in h1["poolings"]:
        raise PresetError(f"h1.poolings: must include the curriculum's pooling {mt.pooling!r}")
    if h1["n_boot"] < 10 or h1["signal_batch_size"] < 1 or not 0 < h1["confidence"] < 1:
        raise PresetError("h1: n_boot must be >= 10, signal_batch_size >= 1, confidence in (0, 1)")
    t = cur.training
    if cur.curriculum.pacing == "step" and t.steps_per_epoch and \
            t.curriculum_end_epoch * t.steps_per_epoch > tr["steps"]:
        raise PresetError(f"curriculum.training.steps_per_epoch: the curriculum spans "
                          f"{t.curriculum_end_epoch} x {t.steps_per_epoch} steps, more than training.steps="
                          f"{tr['steps']} (the strategies would never reach the full data set)")
    return cfg


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


def precompute_difficulty(cfg: Mapping[str, Any], train: Sequence[Any], models: Mapping[str, Any],
                          out: Path) -> dict[tuple[str, str], MetaTokenDifficultyDataset]:
    """One difficulty file per (pooling, metric); the models run once per pooling.

    The shards of a pooling's extraction (``difficulty/work_<pooling>``) are kept, so the files of
    the other metrics are merges of the same pooled vectors (no model run).
    """
    files = {}
    ddir = out / "difficulty"
    ddir.mkdir(parents=True, exist_ok=True)
    for pooling in cfg["h1"]["poolings"]:
        for metric in cfg["h1"]["metrics"]:
            ccfg = _curriculum_config(cfg, pooling=pooling, distance_metric=metric)
            path = ddir / f"{pooling}_{metric}.safetensors"
            logger.info("difficulty: pooling=%s metric=%s -> %s", pooling, metric, path)
            files[(pooling, metric)] = MetaTokenDifficultyDataset.precompute(
                train, models["cloud"], models["edge"], path, ccfg, work_dir=ddir / f"work_{pooling}",
                keep_work_dir=True, model_info=models["info"])
    return files


def compute_signals(cfg: Mapping[str, Any], train: Sequence[Any], models: Mapping[str, Any],
                    out: Path, fingerprint: str) -> dict[str, np.ndarray]:
    """The cheap signals (cached in ``signals.npz`` under ``fingerprint``: samples, models, lengths)."""
    from torch_curriculum import signals as sig

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
    tmp = out / "signals.tmp.npz"
    np.savez(tmp, fingerprint=np.array(fingerprint), **res)
    tmp.replace(path)
    return res


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


# Run settings a finished log must share with the current preset to be reused.
_RESUME_KEYS = ("steps", "batch_size", "lr", "seed", "data_fingerprint", "difficulty_fingerprint", "generator",
                "curriculum", "sampler_strategy")


def _log_complete(path: Path, expected: Mapping[str, Any], *, need_test: bool, need_eval: bool) -> bool:
    """A finished run: its log has an ``end`` record (and ``test`` / ``per_sample_eval`` if needed).

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
    done = "end" in kinds and (not need_test or "test" in kinds) and (not need_eval or "per_sample_eval" in kinds)
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


def _control_table(name: str, signals: Mapping[str, np.ndarray], primary: torch.Tensor) -> torch.Tensor:
    if name == "ctrl_length":
        col = signals["response_length"]
    elif name == "ctrl_edge_loss":
        col = signals["edge_loss_before"]
    else:
        col = -primary.numpy()
    col = np.asarray(col, dtype=np.float64)
    if not np.isfinite(col).all():
        bad = int(np.flatnonzero(~np.isfinite(col))[0])
        raise ValueError(f"control {name}: the score of training sample {bad} is not finite")
    return torch.from_numpy(col.copy())[:, None]


def train_all(cfg: Mapping[str, Any], data: Any, edge: Any, difficulty: MetaTokenDifficultyDataset,
              signals: Mapping[str, np.ndarray], out: Path, run_info: Mapping[str, Any]) -> tuple[int, int]:
    """Train every (seed, strategy) not finished yet; returns (trained, skipped)."""
    from torch_curriculum.loragen import LoRAGenConfig, evaluate_per_sample_loss
    from torch_curriculum.loragen._experiment import run_strategy

    tr = cfg["training"]
    ccfg = _curriculum_config(cfg)
    gen_cfg = LoRAGenConfig.from_dict(dict(tr["generator"]))
    eval_bs = tr["eval_batch_size"] or tr["batch_size"]
    trained = skipped = 0
    plan = _run_plan(cfg)
    for i, (seed, name) in enumerate(plan):
        log_path = out / "runs" / name / f"seed{seed}.jsonl"
        is_random = name == "random"
        if name in CONTROLS:
            strategy, table = "easy_to_hard", _control_table(name, signals, difficulty.difficulty)
            overrides = {"top_k": 1}
        else:
            strategy, table, overrides = name, difficulty, None
        cur = ccfg.to_dict()
        cur["curriculum"]["strategy"], cur["training"]["seed"] = strategy, seed
        expected = {"steps": tr["steps"], "batch_size": tr["batch_size"], "lr": float(tr["lr"]), "seed": seed,
                    "generator": dataclasses.asdict(gen_cfg), "curriculum": cur, "sampler_strategy": strategy,
                    **{k: v for k, v in run_info.items() if k.endswith("fingerprint")}}
        if _log_complete(log_path, expected, need_test=data.test is not None, need_eval=is_random):
            skipped += 1
            continue

        def after(generator: Any, result: Any, log_path: Path = log_path) -> None:
            # H1's second target: every training sample's loss under the trained random-order generator
            losses = evaluate_per_sample_loss(generator, data.train, data.collate, batch_size=eval_bs)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"type": "per_sample_eval", "split": "train",
                                     "loss": [round(v, 6) for v in losses]}) + "\n")

        logger.info("[%d/%d] %s seed %d (%d steps)", i + 1, len(plan), name, seed, tr["steps"])
        t0 = time.perf_counter()
        res = run_strategy(strategy, edge_model=edge, data=data, difficulty=table, config=ccfg, steps=tr["steps"],
                           batch_size=tr["batch_size"], lr=float(tr["lr"]), eval_every=tr["eval_every"], seed=seed,
                           generator_config=gen_cfg, log_path=log_path, sampler_overrides=overrides,
                           run_info={**run_info, "strategy": name, "sampler_strategy": strategy,
                                     "control": CONTROL_INFO.get(name)},
                           on_trained=after if is_random else None)
        trained += 1
        logger.info("%s seed %d: final val %.4f, test %s, %.0f s", name, seed, res.final_val_loss,
                    f"{res.test_loss:.4f}" if res.test_loss is not None else "-", time.perf_counter() - t0)
    return trained, skipped


def h1_targets(cfg: Mapping[str, Any], out: Path, n: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-sample targets from the finished random-order runs (NaN where never measured)."""
    from torch_curriculum.metrics import per_sample_mean_loss

    idx, loss, after = [], [], []
    for seed in cfg["seeds"]:
        path = out / "runs" / "random" / f"seed{seed}.jsonl"
        if not path.is_file():
            continue
        log = _results.read_run_log(path)
        if log["per_sample"] is not None:
            idx.append(log["per_sample"]["indices"])
            loss.append(log["per_sample"]["losses"])
        for rec in log["other"]:
            if rec.get("type") == "per_sample_eval" and len(rec.get("loss", [])) == n:
                after.append(np.asarray(rec["loss"], dtype=np.float64))
    targets, desc = {}, {}
    if idx:
        targets["train_loss_mean"] = per_sample_mean_loss(np.concatenate(idx), np.concatenate(loss), n)
        desc["train_loss_mean"] = ("per-sample LM loss of the generator-equipped edge model, averaged over "
                                   f"every step the sample was drawn in the random-order runs ({len(idx)} seeds)")
    if after:
        targets["loss_after_training"] = np.nanmean(np.stack(after), axis=0)
        desc["loss_after_training"] = ("per-sample LM loss on the training set under the trained random-order "
                                       f"generator (eval mode), mean over {len(after)} seeds")
    return targets, desc


def h1_signals(cfg: Mapping[str, Any], files: Mapping[tuple[str, str], MetaTokenDifficultyDataset],
               cheap: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """Every meta-token aggregate x metric x pooling, plus the cheap signals."""
    signals, info = {}, {}
    for (pooling, metric), ds in files.items():
        for agg in AGGREGATE_KEYS:
            name = f"meta_{metric}_{pooling}_{agg}"
            signals[name] = ds.scores(agg).numpy().astype(np.float64)
            label = f"top{ds.top_k}_mean" if agg == "topk_mean" else agg
            info[name] = {"kind": "meta_token",
                          "description": f"meta-token difference: {metric} distance, {pooling} pooling, "
                                         f"{label} over rank-normalised layers"}
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


def run_preset(cfg: Mapping[str, Any], out: str | Path, *, report: bool = True, plots: bool = True,
               config_path: str | None = None) -> dict[str, Any]:
    """Run (or resume) a validated preset and write ``results.json`` (+ the report).

    Args:
        cfg (Mapping): from :func:`load_preset` / :func:`validate_preset`.
        out (str | Path): results directory (``benchmarks/results/<preset>``).
        report (bool): write ``report.md`` (and plots). Default True.
        plots (bool): PNG plots with the report. Default True.
        config_path (str | None): recorded in the provenance.

    Returns:
        dict: ``results`` (path), ``report`` (path or None), ``runs_trained``, ``runs_skipped``, ``wall_s``.
    """
    from torch_curriculum.data import data_fingerprint as samples_fingerprint
    from torch_curriculum.loragen._experiment import prepare_generator_data

    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train, val, test, data_desc, data_file = load_splits(cfg["data"])
    fp = samples_fingerprint(list(train) + list(val) + list(test))
    logger.info("data: %s: %d train / %d val / %d test", data_desc, len(train), len(val), len(test))
    texts = [t for s in list(train) + list(val) + list(test) for t in (*s.persona, *s.context, s.response)]
    layout = ["Persona: Dialogue: You:", _curriculum_config(cfg).meta_token.system_prompt]
    models = load_models(cfg["models"], texts + layout)
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    files = precompute_difficulty(cfg, train, models, out)
    timings["precompute_s"] = time.perf_counter() - t0
    mt = _curriculum_config(cfg).meta_token
    primary = files[(mt.pooling, mt.distance_metric)]

    t0 = time.perf_counter()
    mt0 = _curriculum_config(cfg).meta_token
    signal_key = hashlib.sha256(json.dumps({"samples": fp, "models": models["info"], "max_length": cfg["data"]["max_length"],
                                            "max_context_turns": mt0.max_context_turns}, sort_keys=True,
                                           default=str).encode()).hexdigest()
    cheap = compute_signals(cfg, train, models, out, signal_key)
    timings["signals_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    edge, edge_tok = models["edge"]
    cloud, cloud_tok = models["cloud"]
    data = prepare_generator_data(train, val, test, edge_tokenizer=edge_tok, cloud_model=cloud,
                                  cloud_tokenizer=cloud_tok, max_length=cfg["data"]["max_length"],
                                  max_context_turns=mt.max_context_turns,
                                  cloud_cache_path=out / "cloud_states.safetensors", progress=False)
    timings["cloud_states_s"] = time.perf_counter() - t0
    del cloud  # its states are cached; training needs only the edge model

    t0 = time.perf_counter()
    run_info = {"preset": cfg["preset"], "data": data_desc, "data_fingerprint": fp,
                "difficulty_file": str(Path(primary.path).relative_to(out)),
                "difficulty_fingerprint": primary.metadata.get("run_key")}
    trained, skipped = train_all(cfg, data, edge, primary, cheap, out, run_info)
    timings["training_s"] = time.perf_counter() - t0

    records = []
    for seed, name in _run_plan(cfg):
        path = out / "runs" / name / f"seed{seed}.jsonl"
        records.append(_results.run_record_from_log(path, name, seed, results_dir=out))
    n = len(train)
    targets, target_desc = h1_targets(cfg, out, n)
    signals, signal_info = h1_signals(cfg, files, cheap)
    arrays = _results.save_arrays(out, layer_diffs=primary.layer_diffs, layer_diffs_raw=primary.raw_layer_diffs,
                                  h1_samples={**signals, **targets})
    diff_paths = [files[k].path for k in sorted(files)]
    provenance = {
        "config": cfg, "config_file": config_path, "seed": cfg["seeds"][0], "seeds": list(cfg["seeds"]),
        "data_fingerprint": _results.data_fingerprint(*([data_file] if data_file else []), *diff_paths),
        "samples_fingerprint": fp, "data": data_desc,
        "splits": {"train": len(train), "val": len(val), "test": len(test)},
        "models": models["info"], "difficulty_files": [str(Path(p).relative_to(out)) for p in diff_paths],
        "primary_difficulty": {"pooling": mt.pooling, "metric": mt.distance_metric,
                               "score": f"top{mt.top_k}_mean" if mt.primary_score == "topk_mean" else mt.primary_score},
        "controls": {c: CONTROL_INFO[c] for c in cfg["controls"]},
        "host": {"platform": platform.platform(), "machine": platform.machine(),
                 "torch_threads": torch.get_num_threads(),
                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "runs_trained_this_invocation": trained, "runs_resumed": skipped,
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    doc = _results.build_results(records, signals=signals if targets else None, targets=targets or None,
                                 primary_target="train_loss_mean" if "train_loss_mean" in targets else None,
                                 signal_info=signal_info, target_descriptions=target_desc, provenance=provenance,
                                 arrays=arrays, preset=cfg["preset"], n_boot=cfg["h1"]["n_boot"],
                                 confidence=float(cfg["h1"]["confidence"]), seed=cfg["seeds"][0])
    res_path = _results.write_results(out, doc)
    rep = _report.build_report(out, plots=plots) if report else None
    return {"results": str(res_path), "report": str(rep) if rep else None, "runs_trained": trained,
            "runs_skipped": skipped, "wall_s": round(time.perf_counter() - t_start, 1)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="cpu", help="a preset in benchmarks/configs/ (cpu, gpu, smoke); default cpu")
    g.add_argument("--config", type=Path, help="a preset YAML file anywhere")
    p.add_argument("--data", default=None, help="dialogue file overriding data.source (PersonaChat, "
                                                "Synthetic-Persona-Chat CSV, chitchat JSON, JSONL)")
    p.add_argument("--out", type=Path, default=None, help="results dir (default benchmarks/results/<preset>)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds overriding the preset's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (overrides the preset)")
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument("--no-plots", action="store_true", help="Markdown report without PNGs")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; see the module docstring."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    path = args.config or ROOT / "configs" / f"{args.preset}.yaml"
    try:
        cfg = load_preset(path)
        if args.data is not None:
            cfg["data"]["source"] = str(args.data)
        if args.seeds is not None:
            cfg["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.threads is not None:
            cfg["threads"] = args.threads
        cfg = validate_preset(cfg)
    except (PresetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or ROOT / "results" / cfg["preset"]
    summary = run_preset(cfg, out, report=not args.no_report, plots=not args.no_plots, config_path=str(path))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
