"""``torch-curriculum score``: run both models over a data set and write the difficulty file.

Only argparse is imported at module level; torch, transformers and the library load inside ``run``.
"""

from __future__ import annotations

import argparse

HELP = "run the cloud and edge models over a data set and write the difficulty file (and labels)"

DESCRIPTION = """\
Score every sample of a dialogue data set by how far apart the cloud and the edge model's meta
tokens are, layer by layer, and write one difficulty file (safetensors) that the samplers read.

  torch-curriculum score --cloud bundled --edge bundled \\
      --data persona_chat.csv --max-samples 64 --out difficulty.safetensors --labels labels.jsonl

Same command on K processes (each rank computes its shards, rank 0 merges; the file is identical):
  torchrun --nproc_per_node K -m torch_curriculum score ...

Models: a Hugging Face id (Qwen/Qwen2.5-1.5B-Instruct), a local folder, or `bundled` (the embedded
SmolLM2-135M edge / Qwen2.5-0.5B cloud). Data: a dialogue file (PersonaChat .txt/.json,
Synthetic-Persona-Chat .csv, chitchat .json, .jsonl), or a Hugging Face dataset (a save_to_disk
folder, .parquet, or .jsonl rows with --format hf) mapped with --persona/context/response/id-column.
A killed run restarted with the same command resumes from its finished shards."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("score", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("models")
    m.add_argument("--cloud", required=True, metavar="ID|DIR|bundled", help="the large (cloud) model")
    m.add_argument("--edge", required=True, metavar="ID|DIR|bundled", help="the small (edge) model")
    m.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="compute dtype: auto = bf16 on CUDA and on CPUs with bf16 matrix units "
                        "(avx512_bf16/amx_bf16), fp32 elsewhere (default: auto)")
    m.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where the models run (default: auto = cuda:LOCAL_RANK when CUDA is available, else cpu)")
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="PATH", help="dialogue file or Hugging Face dataset")
    d.add_argument("--format", default="auto", choices=["auto", "dialogue", "hf"],
                   help="auto: folders and .parquet are Hugging Face datasets, other files dialogue formats; "
                        "hf: also .jsonl/.json of rows (default: auto)")
    d.add_argument("--split", default=None, help="split of a saved DatasetDict")
    d.add_argument("--persona-column", default="persona", metavar="COL", help="(hf) persona sentences (default: persona)")
    d.add_argument("--context-column", default="context", metavar="COL", help="(hf) earlier turns (default: context)")
    d.add_argument("--response-column", default="response", metavar="COL", help="(hf) the response (default: response)")
    d.add_argument("--id-column", default=None, metavar="COL", help="(hf) unique sample ids (default: row numbers)")
    d.add_argument("--max-samples", type=int, default=0, metavar="N", help="the first N samples only (default: all)")
    o = p.add_argument_group("settings and output")
    o.add_argument("--config", default=None, metavar="YAML",
                   help="CurriculumConfig YAML in the seed's layout (default: the built-in defaults)")
    o.add_argument("--out", required=True, metavar="FILE", help="the difficulty file to write (.safetensors)")
    o.add_argument("--labels", default=None, metavar="FILE", help="also write the seed-schema labels (.jsonl/.json)")
    o.add_argument("--shard-size", type=int, default=256, metavar="N",
                   help="samples per shard: the unit of resume, distribution and memory (default: 256)")
    o.add_argument("--calibration-size", type=int, default=1024, metavar="N",
                   help="samples the ridge maps / Mahalanobis covariances are fitted on (default: 1024)")
    o.add_argument("--work-dir", default=None, metavar="DIR", help="shard folder (default: OUT.work; new or empty)")
    o.add_argument("--signal", default=None, metavar="NAME",
                   help="meta_token.signal: meta (prompt-only meta tokens), response, logit_lens_gap, edge_bpb, "
                        "vocab_kl, uld or knn_agreement (default: the config's, else meta)")
    o.add_argument("--also", action="append", default=[], metavar="NAME=FILE",
                   help="an extra difficulty file from the same model passes: a metric (l2, cosine, "
                        "coord_softmax_kl, mahalanobis) or a cross-model signal name (repeatable)")
    o.add_argument("--overwrite", action="store_true", help="replace an output of another run")
    o.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per process")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _device(spec: str):
    import os

    import torch

    from ..cli import CLIError

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {spec!r}: not a device (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {spec}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {spec!r}: only cpu and cuda are supported")
    return dev


def load_side(flag: str, spec: str, dtype, device):
    """``(model, tokenizer)`` for ``--cloud`` / ``--edge``: ``bundled``, a folder or a Hub id."""
    from pathlib import Path

    from ..cli import CLIError

    which = flag.lstrip("-")
    try:
        if spec == "bundled":
            from ..bundled import load_bundled

            return load_bundled(which, dtype=dtype, device=device)
        from ..bundled import load_model

        if Path(spec).exists() and not Path(spec).is_dir():
            raise CLIError(f"{flag} {spec}: a file, expected a model folder, a Hugging Face id or 'bundled'")
        return load_model(spec, dtype=dtype, device=device)
    except CLIError:
        raise
    except ImportError as e:
        raise CLIError(f"{flag} {spec}: {str(e).splitlines()[0]}") from None
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"{flag} {spec!r}: cannot load the model (no such folder, or an id that is not on the Hub or "
                       f"in the local cache while offline): {first}") from None


def load_samples(args: argparse.Namespace) -> list:
    """The samples of ``--data`` (dialogue formats or a Hugging Face dataset), capped by --max-samples."""
    from pathlib import Path

    from ..cli import CLIError

    path = Path(args.data)
    if not path.exists():
        raise CLIError(f"--data {args.data}: no such file or folder")
    if args.max_samples < 0:
        raise CLIError(f"--max-samples must be >= 0, got {args.max_samples}")
    hf = args.format == "hf" or (args.format == "auto" and (path.is_dir() or path.suffix.lower() == ".parquet"))
    limit = args.max_samples or None
    if hf:
        from ..hf_data import load_hf_dataset, samples_from_hf

        ds = load_hf_dataset(path, split=args.split)
        samples = samples_from_hf(ds, persona_column=args.persona_column, context_column=args.context_column,
                                  response_column=args.response_column, id_column=args.id_column,
                                  source=path.stem or "hf", max_samples=limit, name=str(path))
    else:
        if path.is_dir():
            raise CLIError(f"--data {args.data}: a folder; use --format hf for a saved Hugging Face dataset")
        from ..data import read_dialogues

        samples = read_dialogues(path, max_samples=limit)
    if not samples:
        raise CLIError(f"--data {args.data}: no samples")
    return samples


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import logging
    import os
    import sys
    from pathlib import Path

    import torch

    from ..cli import CLIError
    from ..extraction import resolve_dtype

    world = int(os.environ.get("WORLD_SIZE", "1"))
    for flag, v, lo in (("--shard-size", args.shard_size, 1), ("--calibration-size", args.calibration_size, 2)):
        if v < lo:
            raise CLIError(f"{flag} must be >= {lo}, got {v}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {args.out}: a folder; name the .safetensors file to write")
    from ..config import CurriculumConfig

    if args.config is not None:
        if not Path(args.config).is_file():
            raise CLIError(f"--config {args.config}: no such file")
        cfg = CurriculumConfig.from_yaml(args.config)
    else:
        cfg = CurriculumConfig()
    if args.signal is not None:
        from ..config import ConfigError

        cfg.meta_token.signal = args.signal
        try:
            cfg.meta_token.validate()
        except ConfigError as e:
            raise CLIError(f"--signal {args.signal}: {e}") from None
    outputs = {}
    for item in args.also:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CLIError(f"--also {item!r}: expected NAME=FILE, e.g. --also mahalanobis=maha.safetensors")
        if name in outputs:
            raise CLIError(f"--also {name}: given twice")
        outputs[name] = Path(path)
    device = _device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    samples = load_samples(args)
    from ..precompute import MIN_SAMPLES

    if len(samples) < MIN_SAMPLES:  # before loading any model
        raise CLIError(f"--data {args.data}: precompute needs at least {MIN_SAMPLES} samples, got N={len(samples)}")
    if args.no_progress:
        with contextlib.suppress(ImportError):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        # weights stay in their stored precision; bf16 is the compute dtype (autocast)
        cloud = load_side("--cloud", args.cloud, torch.float32, device)
        edge = load_side("--edge", args.edge, torch.float32, device)
        from ..precompute import precompute

        try:
            ds = precompute(samples, cloud, edge, out, cfg, labels_path=args.labels, shard_size=args.shard_size,
                            work_dir=args.work_dir, progress=rank == 0 and not args.no_progress,
                            overwrite=args.overwrite, calibration_size=args.calibration_size, dtype=dtype,
                            outputs=outputs or None,
                            model_info={"cloud": {"cli_spec": args.cloud}, "edge": {"cli_spec": args.edge}})
        except (ValueError, RuntimeError) as e:
            from ..dataset import DifficultyFileError

            # DifficultyFileError is printed by the CLI as it is; a RuntimeError is a user error only
            # when it reports another rank's input error (precompute's _sync_errors), else a bug
            if isinstance(e, DifficultyFileError) or (isinstance(e, RuntimeError) and "failed on rank" not in str(e)):
                raise
            raise CLIError(str(e).strip().splitlines()[0]) from None
        if rank == 0:
            stages = torch.bincount(ds.stage.long(), minlength=len(cfg.curriculum.stage_percentiles) + 1)[1:]
            sys.stdout.write(json.dumps({"out": str(out), "signal": ds.provenance.get("signal"),
                                         "also": {k: str(v) for k, v in outputs.items()},
                                         "labels": args.labels, "samples": len(ds),
                                         "layers": ds.num_layers, "world_size": world,
                                         "dtype": str(dtype).replace("torch.", ""),
                                         "samples_per_stage": stages.tolist()}) + "\n")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if world > 1:  # gloo can abort at interpreter exit after a model ran: see exit_after_gloo_run
        from ..precompute import exit_after_gloo_run

        exit_after_gloo_run()
    return 0
