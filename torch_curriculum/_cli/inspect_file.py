"""``torch-curriculum inspect``: what a difficulty file holds, in one screen (or JSON, or a plot)."""

from __future__ import annotations

import argparse

HELP = "summarise a difficulty file: models, settings, stage counts, per-layer quantiles"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help=HELP, description=HELP + ".\n\n  torch-curriculum inspect "
                              "difficulty.safetensors [--plot layers.png] [--json] [--verify]",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a difficulty file written by `torch-curriculum score`")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw the per-layer distributions and the score histogram (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--verify", action="store_true", help="read every tensor in full and check it")
    return p


_Q = (0.05, 0.25, 0.5, 0.75, 0.95)


def summarise(ds) -> dict:
    """The inspect summary of an opened :class:`~torch_curriculum.dataset.MetaTokenDifficultyDataset`."""
    import torch

    p = ds.provenance
    models = p.get("models") or {}
    align = p.get("alignment") if isinstance(p.get("alignment"), dict) else {}  # a str in cross-model files
    q = torch.tensor(_Q, dtype=torch.float64)
    raw, norm = ds.raw_layer_diffs, ds.layer_diffs
    stages = torch.bincount(ds.stage.long(), minlength=len(p.get("stage_percentiles", [])) + 1)[1:].tolist()
    layer_map = p.get("layer_map") or [None] * ds.num_layers

    def model(side: str) -> dict:
        m = models.get(side) or {}
        return {k: m.get(k) for k in ("name_or_path", "cli_spec", "model_type", "num_hidden_layers", "hidden_size",
                                      "compute_dtype", "weights_digest")}

    return {
        "file": str(ds.path), "num_samples": len(ds), "num_layers": ds.num_layers,
        "models": {"cloud": model("cloud"), "edge": model("edge")},
        "signal": p.get("signal"), "metric": p.get("metric") if "distance" in str(p.get("signal")) else None,
        "pooling": p.get("pooling"), "alignment": align.get("method"),
        "num_anchors": align.get("num_anchors"), "anchor_ids": (align.get("anchor_ids") or [])[:5],
        "calibration_size": align.get("calibration_size"), "normalization": p.get("normalization"),
        "top_k": p.get("top_k"), "tau": p.get("tau"), "primary_score": p.get("primary_score_name"),
        "stage_percentiles": p.get("stage_percentiles"), "fingerprint": ds.metadata.get("fingerprint"),
        "library_version": p.get("library_version"), "samples_per_stage": stages,
        "quantiles": list(_Q),
        "layers": [{"edge_layer": j, "cloud_layer": layer_map[j],
                    "raw": torch.quantile(raw[:, j], q).tolist(), "normalised": torch.quantile(norm[:, j], q).tolist()}
                   for j in range(ds.num_layers)],
        "difficulty": torch.quantile(ds.difficulty, q).tolist(),
    }


def _text(s: dict) -> str:
    def fmt(xs):
        return " ".join(f"{x:9.4g}" for x in xs)

    lines = [f"{s['file']}: {s['num_samples']} samples x {s['num_layers']} layers "
             f"(torch_curriculum {s['library_version']})"]
    for side in ("cloud", "edge"):
        m = s["models"][side]
        lines.append(f"  {side:5s}  {m['name_or_path'] or m['cli_spec'] or '?'}  [{m['model_type']}, "
                     f"{m['num_hidden_layers']} layers x {m['hidden_size']}, {m['compute_dtype']}]  {m['weights_digest']}")
    lines.append(f"  signal {s['signal']}")
    lines.append(f"  metric {s['metric']}, pooling {s['pooling']}, alignment {s['alignment']}"
                 + (f" (K={s['num_anchors']} anchors, e.g. {s['anchor_ids'][:3]})" if s["num_anchors"] else "")
                 + (f", calibration {s['calibration_size']}" if s["calibration_size"] else ""))
    lines.append(f"  normalisation {s['normalization']}, top_k {s['top_k']}, tau {s['tau']:.4g}, "
                 f"primary score {s['primary_score']}")
    lines.append(f"  data fingerprint {s['fingerprint']}")
    lines.append(f"  stages {s['stage_percentiles']}: samples per stage {s['samples_per_stage']}")
    head = " ".join(f"{'q' + format(q, '.2f'):>9s}" for q in s["quantiles"])
    lines.append(f"  difficulty        {fmt(s['difficulty'])}")
    lines.append(f"  layer  cloud  raw {head}  | normalised {head}")
    for row in s["layers"]:
        lines.append(f"  {row['edge_layer']:5d}  {row['cloud_layer']!s:>5s}      {fmt(row['raw'])}  |            "
                     f"{fmt(row['normalised'])}")
    return "\n".join(lines)


def _plot(ds, out: str) -> None:
    from .._optional import require

    require("matplotlib", "examples", "inspect --plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    raw, norm = ds.raw_layer_diffs.numpy(), ds.layer_diffs.numpy()
    axes[0].boxplot([raw[:, j] for j in range(ds.num_layers)], showfliers=False)
    axes[0].set(title="raw per-layer difference", xlabel="edge layer", ylabel=ds.provenance.get("metric", ""))
    axes[1].boxplot([norm[:, j] for j in range(ds.num_layers)], showfliers=False)
    axes[1].set(title="normalised per-layer difference", xlabel="edge layer")
    axes[2].hist(ds.difficulty.numpy(), bins=min(50, max(5, len(ds) // 4)))
    axes[2].set(title=f"score ({ds.provenance.get('primary_score_name')})", xlabel="score", ylabel="samples")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from ..cli import CLIError
    from ..dataset import DifficultyFileError, MetaTokenDifficultyDataset

    ds = MetaTokenDifficultyDataset(args.file)
    if args.verify:
        verify = getattr(ds, "verify", None)
        if callable(verify):
            verify()
        names = ["raw_layer_diffs", "layer_diffs", "difficulty", "percentile", "stage"]
        for name in names:
            t = getattr(ds, name)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise DifficultyFileError(f"{args.file}: tensor {name!r} holds NaN/Inf")
        if not bool(((ds.stage >= 1) & (ds.stage <= len(ds.provenance.get("stage_percentiles", [1])))).all()):
            raise DifficultyFileError(f"{args.file}: tensor 'stage' holds values outside the configured stages")
        if len(set(ds.sample_ids)) != len(ds):
            raise DifficultyFileError(f"{args.file}: duplicate sample ids")
    s = summarise(ds)
    if args.plot:
        if not args.plot.lower().endswith((".png", ".pdf", ".svg")):
            raise CLIError(f"--plot {args.plot}: name a .png, .pdf or .svg file")
        try:
            _plot(ds, args.plot)
        except ImportError as e:
            raise CLIError(f"--plot: {str(e).splitlines()[0]}") from None
        s["plot"] = args.plot
    sys.stdout.write((json.dumps(s) if args.json else _text(s) + ("\n  verified" if args.verify else "")
                      + (f"\n  plot: {args.plot}" if args.plot else "")) + "\n")
    return 0
