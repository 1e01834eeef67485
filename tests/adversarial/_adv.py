"""Helpers shared by the adversarial tests (imported by file name; the folder is on sys.path in
pytest's default rootdir/prepend mode)."""

from __future__ import annotations

from pathlib import Path

import torch

from torch_curriculum.config import CurriculumConfig
from torch_curriculum.dataset import MetaTokenDifficultyDataset


def small_file(path: Path, n: int = 24, layers: int = 6, ids: list[str] | None = None, seed: int = 0,
               **meta) -> MetaTokenDifficultyDataset:
    """A real difficulty file from random raw distances (written by the library's own writer)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, layers, generator=g, dtype=torch.float64) * torch.arange(1, layers + 1)
    ids = ids if ids is not None else [f"s{i:03d}" for i in range(n)]
    return MetaTokenDifficultyDataset.from_distances(raw, ids, path, CurriculumConfig(), metadata=meta or None,
                                                      overwrite=True)


def everything(ds: MetaTokenDifficultyDataset) -> dict:
    """Every value a user can read from an opened file, fully materialised (reads every tensor)."""
    out = {"ids": list(ds.sample_ids), "metadata": ds.metadata, "provenance": ds.provenance, "n": len(ds),
           "L": ds.num_layers}
    for name in ("raw_layer_diffs", "layer_diffs", "difficulty", "percentile", "stage"):
        out[name] = getattr(ds, name).clone()
    for k in ("mean", "max", "weighted_mean", "topk_mean"):
        out[f"scores.{k}"] = ds.scores(k).clone()
    return out


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not (x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True
