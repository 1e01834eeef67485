"""A PEFT LoRA on the edge model, trained by ``transformers.Trainer`` under a curriculum.

Run:
    python examples/hf_trainer_curriculum.py --difficulty runs/quickstart/difficulty.safetensors
    python examples/hf_trainer_curriculum.py --max-samples 32 --max-steps 12        # precomputes its own file
    python examples/hf_trainer_curriculum.py --model HuggingFaceTB/SmolLM2-360M-Instruct --difficulty ...
    python examples/hf_trainer_curriculum.py --save-steps 4                         # checkpoints with the curriculum state
    python examples/hf_trainer_curriculum.py --save-steps 4 --resume                # continue from the last one, exactly

Wiring (every part is the library's, nothing is specific to this script):

* training samples: the samples the difficulty file scores, in its order (``--difficulty``, e.g. the
  quickstart's ``runs/quickstart/difficulty.safetensors``; its sample ids are looked up in ``--data``,
  by default the bundled chitchat-dataset's training split). Without ``--difficulty`` the first
  ``--max-samples`` training samples are scored on the fly with the bundled cloud model;
* examples: ``torch_curriculum.loragen.build_examples`` (the ``data.format_prompt`` layout), labels
  only on the response tokens, padded by ``transformers.DataCollatorForSeq2Seq``;
* model: the edge model (bundled SmolLM2-135M, or ``--model`` HF id / folder) with a PEFT LoRA on
  ``--targets`` (default ``q_proj,v_proj``; ``gate_proj,up_proj,down_proj`` for LoRA-Gen's FFN targets);
* curriculum: ``build_sampler(config, difficulty)`` (``--strategy`` overrides the config's), paced in
  steps; :class:`CurriculumTrainer` draws from it and adds a :class:`PacingCallback` (the loss feeds
  dynamic strategies; ``curriculum/*`` keys go into the log history); a :class:`LayerMaskScheduler`
  (``layer_mask=``) freezes the LoRA layers the sampler does not train yet (layer-wise progressive:
  stage s trains layers ``[0, ceil(s * L / S))``);
* checkpoints (``--save-steps``): each Trainer checkpoint also holds ``curriculum_state.json``
  (sampler, pacing and layer-mask state); ``--resume`` continues from the last checkpoint in
  ``<out>/trainer`` and trains on exactly the batches the uninterrupted run would have.

At the end it prints the ``curriculum/*`` entries of the Trainer's log history and how far each LoRA
layer moved; layers that were frozen throughout must not have moved at all. ``<out>/summary.json``
holds the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from torch_curriculum import (
    CurriculumConfig,
    CurriculumTrainer,
    LayerMaskScheduler,
    MetaTokenDifficultyDataset,
    build_sampler,
)
from torch_curriculum.bundled import load_bundled, load_chitchat, load_model
from torch_curriculum.config import canonical_strategy
from torch_curriculum.data import data_fingerprint, read_dialogues
from torch_curriculum.layer_mask import DEFAULT_LAYER_PATTERN
from torch_curriculum.loragen import build_examples

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("hf_trainer_curriculum")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--difficulty", type=Path, default=None,
                   help="difficulty file whose samples are the training set (default: precompute one)")
    p.add_argument("--data", type=Path, default=None,
                   help="dialogue file the samples come from (default: bundled chitchat-dataset, train split)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "hf_trainer.yaml", help="CurriculumConfig YAML")
    p.add_argument("--model", default=None, help="edge model: HF id or folder (default: bundled SmolLM2-135M)")
    p.add_argument("--strategy", default=None, help="curriculum strategy (default: the config's)")
    p.add_argument("--max-samples", type=int, default=32,
                   help="training samples scored on the fly when --difficulty is not given (default 32)")
    p.add_argument("--max-steps", type=int, default=12, help="optimizer steps (default 12)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=128, help="edge tokens per example")
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated LoRA target modules")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--curriculum-fraction", type=float, default=0.6,
                   help="share of the steps the curriculum spans before random order over all data")
    p.add_argument("--out", type=Path, default=Path("runs/hf_trainer"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=0,
                   help="save a checkpoint (with the curriculum state) every N steps (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="resume from the last checkpoint in <out>/trainer (exact: same batches, same state)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def _source_samples(data: Path | None) -> list:
    return load_chitchat(split="train") if data is None else read_dialogues(data)


def training_samples(args, cfg, edge, edge_tok):
    """(samples, difficulty): the file's samples in its order, or freshly scored ones."""
    pool = _source_samples(args.data)
    if args.difficulty is not None:
        path = args.difficulty
        ids = MetaTokenDifficultyDataset(path).sample_ids
        by_id = {s.sample_id: s for s in pool}
        missing = [i for i in ids if i not in by_id]
        if missing:
            src = args.data or "the bundled chitchat-dataset (train split)"
            raise ValueError(f"{path}: {len(missing)} of its {len(ids)} sample ids are not in {src}, e.g. "
                             f"{missing[:3]}; pass the --data file the difficulty file was computed from")
        samples = [by_id[i] for i in ids]
        # the fingerprint check proves these are the very samples (text, not only ids) that were scored
        return samples, MetaTokenDifficultyDataset(path, fingerprint=data_fingerprint(samples))
    if args.max_samples < 2:
        raise ValueError(f"--max-samples must be >= 2 (the relative alignment needs anchors), got {args.max_samples}")
    samples = pool[:args.max_samples]
    cloud = load_bundled("cloud")
    args.out.mkdir(parents=True, exist_ok=True)
    difficulty = MetaTokenDifficultyDataset.precompute(
        samples, cloud, (edge, edge_tok), args.out / "difficulty.safetensors", cfg,
        labels_path=args.out / "labels.jsonl")
    return samples, difficulty


class ExampleDataset(torch.utils.data.Dataset):
    """``input_ids`` / ``labels`` dicts from ``build_examples`` (index i = difficulty sample i)."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ex = self.examples[i]
        return {"input_ids": list(ex.input_ids), "labels": list(ex.labels)}


def lora_layer_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def layer_movement(before: dict[str, torch.Tensor], model) -> dict[int, float]:
    """Per layer, the largest absolute change of any of its LoRA weights."""
    import re

    pattern = re.compile(DEFAULT_LAYER_PATTERN)
    now = dict(model.named_parameters())
    moved: dict[int, float] = {}
    for name, old in before.items():
        layer = int(pattern.search(name).group(1))
        delta = float((now[name].detach() - old).abs().max())
        moved[layer] = max(moved.get(layer, 0.0), delta)
    return dict(sorted(moved.items()))


def main(argv=None) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    cfg = CurriculumConfig.from_yaml(args.config)
    if args.curriculum_fraction <= 0:
        raise ValueError(f"--curriculum-fraction must be > 0, got {args.curriculum_fraction}")
    cfg_dict = cfg.to_dict()
    if args.strategy:
        cfg_dict["curriculum"]["strategy"] = canonical_strategy(args.strategy)
    # pace in optimizer steps: curriculum_end_epoch "epochs" span --curriculum-fraction of the run
    cfg_dict["curriculum"]["pacing"] = "step"
    cfg_dict["training"]["steps_per_epoch"] = max(1, round(
        args.curriculum_fraction * args.max_steps / max(1, cfg.training.curriculum_end_epoch)))
    cfg_dict["training"]["seed"] = args.seed
    cfg = CurriculumConfig.from_dict(cfg_dict)

    edge, tok = load_model(args.model) if args.model else load_bundled("edge")
    samples, difficulty = training_samples(args, cfg, edge, tok)
    n_layers = edge.config.num_hidden_layers
    if difficulty.num_layers != n_layers:
        raise ValueError(f"{difficulty.path}: scores {difficulty.num_layers} edge layers but the model has "
                         f"{n_layers}; the file must come from the same edge model")
    examples = build_examples(samples, tok, max_length=args.max_length,
                              max_context_turns=cfg.meta_token.max_context_turns)
    train_ds = ExampleDataset(examples)

    torch.manual_seed(args.seed)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    model = get_peft_model(edge, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                            target_modules=targets, task_type="CAUSAL_LM"))
    model.print_trainable_parameters()
    sampler = build_sampler(cfg, difficulty)
    masks = LayerMaskScheduler(model, sampler)
    before = lora_layer_snapshot(model)
    ever_trained: set[int] = set()

    class RecordTrainedLayers(TrainerCallback):
        """Remembers every layer that was trainable at some optimizer step (to check the frozen ones)."""

        def on_step_begin(self, a, state, control, **kw):
            layers = masks.current_layers
            ever_trained.update(masks.layers if layers is None else layers)

    args.out.mkdir(parents=True, exist_ok=True)
    targs = TrainingArguments(
        output_dir=str(args.out / "trainer"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=1,
        save_strategy="steps" if args.save_steps > 0 else "no", save_steps=max(args.save_steps, 1),
        report_to="none", remove_unused_columns=False, seed=args.seed, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(), disable_tqdm=False)
    trainer = CurriculumTrainer(
        model=model, args=targs, train_dataset=train_ds, curriculum_sampler=sampler, pacing=True,
        layer_mask=masks,  # applied before user callbacks, so the recorder reads the applied mask
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
        callbacks=[RecordTrainedLayers()])
    trainer.train(resume_from_checkpoint=True if args.resume else None)

    history = [{k: v for k, v in rec.items() if k.startswith("curriculum/") or k in ("step", "loss")}
               for rec in trainer.state.log_history if any(k.startswith("curriculum/") for k in rec)]
    moved = layer_movement(before, model)
    never = sorted(set(moved) - ever_trained)
    frozen_moved = {i: moved[i] for i in never if moved[i] != 0.0}
    summary = {"strategy": cfg.curriculum.strategy, "samples": len(train_ds), "steps": trainer.state.global_step,
               "difficulty_file": str(difficulty.path), "lora_targets": targets,
               "layers_trained": sorted(ever_trained), "layers_frozen_throughout": never,
               "max_abs_change_per_layer": {str(k): v for k, v in moved.items()},
               "frozen_layers_that_moved": {str(k): v for k, v in frozen_moved.items()},
               "curriculum_log": history, "total_s": round(time.time() - t0, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    print()
    print(f"PEFT LoRA ({','.join(targets)}, rank {args.rank}) on {type(edge).__name__}, "
          f"{summary['steps']} steps, strategy {cfg.curriculum.strategy}, {len(train_ds)} samples")
    # curriculum/step (the sampler's own step counter) equals the Trainer's step here: not repeated
    keys = sorted({k for rec in history for k in rec if k.startswith("curriculum/")} - {"curriculum/step"})
    print("| step | loss | " + " | ".join(k[len("curriculum/"):] for k in keys) + " |")
    print("| ---: " * (len(keys) + 2) + "|")
    for rec in history:
        cells = [f"{rec[k]:.4g}" if isinstance(rec.get(k), float) else str(rec.get(k, "")) for k in keys]
        print(f"| {rec.get('step', '')} | {rec.get('loss', float('nan')):.4f} | " + " | ".join(cells) + " |")
    print()
    print(f"LoRA layers trained at some step: {len(ever_trained)} of {len(moved)}; frozen throughout: "
          f"{len(never)}, of which moved: {len(frozen_moved)} (must be 0)")
    print(f"summary: {args.out / 'summary.json'}; total time {summary['total_s']:.0f} s")
    if frozen_moved:
        log.error("frozen LoRA layers moved: %s", frozen_moved)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
