"""Precompute: run the cloud and edge models once over the samples and write a difficulty file.

Both models run once over the samples in shards; each shard's raw pooled per-layer vectors of both
models are written atomically (temp file + ``os.replace``) to a work dir next to the output
(``<path>.work/``). A killed run, restarted with the same inputs, skips the finished shards; the
merge only starts when every shard is there and is a pure function of the shard files, so the final
file is byte-identical to an uninterrupted run (no timestamps anywhere). The merge goes layer by
layer (``[N, d]`` in memory at a time): layer map, space alignment (anchors are drawn from all N
samples, which is why alignment waits for the merge), ``layer_distances``, then
``normalize_layers``, every aggregate, percentiles and stages. Under ``torch.distributed`` each rank
computes the shards ``i`` with ``i % world == rank`` into the shared work dir, and rank 0 merges: the
shards are computed identically wherever they run, so the result equals a single-process run.

The work dir holds only files precompute wrote; a non-empty folder it did not create is refused,
and the cleanup removes only its own files (and the folder, when it created it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write
from ._version import __version__
from .alignment import align_layer, resolve_layer_map, select_anchors
from .config import CurriculumConfig
from .dataset import (
    DifficultyFileError,
    MetaTokenDifficultyDataset,
    _check_ids,
    _finalise,
    _json,
    _memmap,
    _scoring_settings,
    read_safetensors_header,
    write_safetensors,
)
from .difficulty import layer_distances

__all__ = ["precompute"]

logger = logging.getLogger(__name__)

_SHARD_SCHEMA = "torch_curriculum.difficulty_shard"


# ------------------------------------------------------------------------------------------ inputs
def _sample_ids_and_fingerprint(samples: Sequence[Any], sample_ids: Sequence[str] | None) -> tuple[list[str], str]:
    """Ids (from ``.sample_id``, ``sample_ids=`` or the index) and a fingerprint of the inputs."""
    n = len(samples)
    if sample_ids is None:
        ids = [getattr(s, "sample_id", None) for s in samples]
        if any(i is None for i in ids):
            ids = [f"sample_{i:08d}" for i in range(n)]
    else:
        ids = list(sample_ids)
    ids = _check_ids(ids, n)
    if all(hasattr(s, "persona") and hasattr(s, "context") and hasattr(s, "response") for s in samples):
        from .data import data_fingerprint  # the dialogue-sample fingerprint users also compute
        return ids, data_fingerprint(samples)
    from .extraction import prompt_parts

    h = hashlib.sha256(b"torch_curriculum.prompts.v1\n")
    for sid, s in zip(ids, samples):
        text, system = prompt_parts(s)
        h.update(_json([sid, text, system]).encode("ascii") + b"\n")
    return ids, h.hexdigest()


def _model_info(model: Any, tokenizer: Any) -> dict[str, Any]:
    """Name, revision, architecture and a cheap weights digest (names, shapes and sampled values)."""
    cfg = getattr(model, "config", None)
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        sample = torch.cat([flat[:256], flat[:: max(1, flat.numel() // 256)][:256]]).float().cpu()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}\n".encode())
        h.update(sample.numpy().tobytes())
    name = str(getattr(cfg, "_name_or_path", "") or "")
    source = None
    record = Path(name) / "torch_curriculum_source.json" if name else None
    if record is not None and record.is_file():
        # a model converted from a GGUF by torch_curriculum.bundled: the GGUF's sha256 is the revision
        with contextlib.suppress(OSError, json.JSONDecodeError):
            source = json.loads(record.read_text(encoding="utf-8"))
    return {
        "name_or_path": name,
        "source": source,
        "revision": getattr(cfg, "_commit_hash", None),
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "dtype": str(next(model.parameters()).dtype),
        "weights_digest": "sampled-sha256:" + h.hexdigest(),
        "tokenizer": str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        "tokenizer_vocab_size": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
    }


def _as_extractor(side: str, obj: Any, mt: Any):
    from .extraction import MetaTokenExtractor

    if isinstance(obj, MetaTokenExtractor):
        if isinstance(obj.pooling, str) and obj.pooling != mt.pooling:
            raise ValueError(f"the {side} extractor pools with {obj.pooling!r} but config meta_token.pooling "
                             f"is {mt.pooling!r}; make them agree")
        return obj
    if isinstance(obj, tuple) and len(obj) == 2:
        if mt.pooling == "meta":
            raise ValueError(f"pooling='meta' needs meta-token embeddings: pass a MetaTokenExtractor(..., "
                             f"pooling='meta', meta_embeddings=...) as {side}")
        return MetaTokenExtractor(obj[0], obj[1], mt.pooling, batch_size=mt.batch_size, max_length=mt.max_length)
    raise TypeError(f"{side} must be a (model, tokenizer) pair or a MetaTokenExtractor, got {type(obj).__name__}")


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sync_errors(err: BaseException | None, where: str) -> None:
    """Collective: every rank learns whether any rank failed (so none waits forever at a barrier)."""
    _rank, world = _dist()
    if world == 1:
        if err is not None:
            raise err
        return
    msgs: list[Any] = [None] * world
    torch.distributed.all_gather_object(msgs, None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        raise RuntimeError(f"{where} failed on rank(s) {[r for r, _ in failed]}: {failed[0][1]}")



def precompute(
    samples: Sequence[Any],
    cloud: Any,
    edge: Any,
    path: str | Path,
    config: CurriculumConfig | None = None,
    *,
    labels_path: str | Path | None = None,
    shard_size: int = 256,
    work_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    keep_work_dir: bool = False,
    sample_ids: Sequence[str] | None = None,
    use_chat_template: bool = False,
    model_info: Mapping[str, Mapping[str, Any]] | None = None,
    _after_shard: Callable[[int], None] | None = None,
) -> MetaTokenDifficultyDataset:
    """Run both models once over ``samples`` and write the difficulty file (and labels).

    Args:
        samples (Sequence): ``DialogueSample``s (formatted per model with
            :func:`torch_curriculum.data.format_prompts`: same system prompt, ``max_context_turns``,
            ``max_length`` from ``config.meta_token``; truncation is logged there), or ready prompts
            (``Prompt`` objects, ``(text, system_text)`` pairs or strings).
        cloud: the cloud model as ``(model, tokenizer)`` or a ``MetaTokenExtractor``.
        edge: the edge model, likewise. L (compared layers) = the edge extractor's layers.
        path (str | Path): output ``.safetensors`` file.
        config (CurriculumConfig | None): settings (``meta_token``: pooling, alignment,
            num_anchors, ridge_alpha, metric, normalisation, K, tau, layer map ...;
            ``curriculum.stage_percentiles``; ``training.seed`` seeds anchors/folds). None = defaults.
        labels_path (str | Path | None): also write the seed-schema labels (``.jsonl``/``.json``).
        shard_size (int): samples per shard (the unit of resume and of distribution). Defaults to 256.
        work_dir (str | Path | None): shard folder; None = ``<path>.work``. Must be shared by all ranks.
        progress (bool): tqdm bar with samples/s (rank 0). Defaults to True.
        overwrite (bool): replace an existing output of another run. Defaults to False (an
            existing output of the *same* run is simply opened).
        keep_work_dir (bool): keep the shards after the merge. Defaults to False.
        sample_ids (Sequence[str] | None): ids when the samples carry none (default: ``sample_{i:08d}``).
        use_chat_template (bool): format DialogueSamples with each tokenizer's chat template.
        model_info (Mapping | None): extra provenance per side, ``{"cloud": {...}, "edge": {...}}``
            (e.g. the GGUF file's sha256).

    Returns:
        MetaTokenDifficultyDataset: the opened file (on every rank).

    Raises:
        ValueError: bad inputs, pooling/config conflicts, K > L, layer map errors, NaN/Inf
            meta tokens or distances (the sample ids are named).
        DifficultyFileError: the work dir holds shards of another run.
        FileExistsError: the output exists, belongs to another run, and ``overwrite`` is False.
    """
    cfg = config or CurriculumConfig()
    mt = cfg.meta_token
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to precompute")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    cloud_ex = _as_extractor("cloud", cloud, mt)
    edge_ex = _as_extractor("edge", edge, mt)
    ids, fingerprint = _sample_ids_and_fingerprint(samples, sample_ids)
    n = len(samples)
    n_edge, n_cloud = edge_ex.num_layers, cloud_ex.num_layers
    if mt.pooling == "meta" and n_edge != n_cloud:
        raise ValueError(f"pooling='meta': the cloud has {n_cloud} meta tokens and the edge {n_edge}; "
                         "both must hold one meta token per compared layer")
    if n_edge is not None and n_cloud is not None:
        resolve_layer_map(mt.layer_map, n_edge, n_cloud)  # fail before any model runs
    if mt.alignment == "identity" and not callable(cloud_ex.pooling) and cloud_ex.hidden_size != edge_ex.hidden_size:
        raise ValueError(f"alignment='identity' needs equal widths, but the cloud is {cloud_ex.hidden_size} wide "
                         f"and the edge {edge_ex.hidden_size}; use alignment='relative' or 'ridge'")
        if mt.top_k > n_edge:
            raise ValueError(f"meta_token.top_k={mt.top_k} exceeds the {n_edge} compared (edge) layers")
    path = Path(path)
    work = Path(work_dir) if work_dir is not None else path.with_name(path.name + ".work")
    dialogue = all(hasattr(s, "persona") and hasattr(s, "context") and hasattr(s, "response") for s in samples)
    info = {"cloud": {**_model_info(cloud_ex.model, cloud_ex.tokenizer), **cloud_ex.describe()},
            "edge": {**_model_info(edge_ex.model, edge_ex.tokenizer), **edge_ex.describe()}}
    for side in ("cloud", "edge"):
        info[side].update((model_info or {}).get(side, {}))
    inputs = {"kind": "dialogue_samples" if dialogue else "prompts", "system_prompt": mt.system_prompt,
              "max_context_turns": mt.max_context_turns, "use_chat_template": bool(use_chat_template),
              "num_samples": n, "fingerprint": fingerprint}
    shard_key = hashlib.sha256(_json({"models": info, "inputs": inputs, "shard_size": shard_size,
                                      "library_version": __version__}).encode()).hexdigest()
    scoring = _scoring_settings(cfg)
    run_key = hashlib.sha256(_json({"shard_key": shard_key, "scoring": scoring}).encode()).hexdigest()
    rank, world = _dist()

    if path.exists() and not overwrite:
        try:
            existing = MetaTokenDifficultyDataset(path)
        except DifficultyFileError:
            existing = None
        if existing is not None and existing.metadata.get("run_key") == run_key:
            logger.info("%s already holds this run's results; opening it", path)
            err = None
            if rank == 0 and labels_path is not None and not Path(labels_path).exists():
                try:  # a run killed between the two writes
                    existing.write_labels(labels_path)
                except BaseException as e:
                    err = e
            _sync_errors(err, "writing labels")
            return existing
        raise FileExistsError(f"{path} exists and holds the results of another run; pass overwrite=True "
                              "or choose another path")
    if labels_path is not None and Path(labels_path).exists() and not overwrite:
        raise FileExistsError(f"label file {labels_path} exists; pass overwrite=True or choose another path")

    # -- shards
    n_shards = math.ceil(n / shard_size)
    err: BaseException | None = None
    try:
        if rank == 0:
            _prepare_work_dir(work, {"shard_key": shard_key, "num_shards": n_shards, "models": info,
                                     "inputs": inputs, "shard_size": shard_size})
    except BaseException as e:  # re-raised by _sync_errors on every rank
        err = e
    _sync_errors(err, "preparing the work dir")
    mine = [i for i in range(n_shards) if i % world == rank]
    todo = [i for i in mine if not _shard_ok(work / f"shard_{i:06d}.safetensors", shard_key, i)]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(min(shard_size, n - i * shard_size) for i in mine), unit="sample",
                   desc="precompute meta tokens", dynamic_ncols=True)
        bar.update(sum(min(shard_size, n - i * shard_size) for i in mine if i not in todo))
    try:
        for i in todo:
            lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
            chunk = samples[lo:hi]
            # each model's pass is half of a sample's work, so the bar (and its samples/s)
            # moves during the cloud pass too; whole samples only, the shard ends exact
            half = _half_progress(bar) if bar is not None else None
            c_vec = cloud_ex.extract(_prompts_for(chunk, cloud_ex, mt, dialogue, use_chat_template),
                                     progress=half)
            e_vec = edge_ex.extract(_prompts_for(chunk, edge_ex, mt, dialogue, use_chat_template),
                                    progress=half)
            # layer-major [L, n, d]: the merge reads one layer of every shard contiguously
            write_safetensors(work / f"shard_{i:06d}.safetensors",
                              {"cloud": c_vec.transpose(0, 1).contiguous(),
                               "edge": e_vec.transpose(0, 1).contiguous()},
                              {"format": _SHARD_SCHEMA, "shard_key": shard_key, "shard": str(i),
                               "start": str(lo), "stop": str(hi)})
            if _after_shard is not None:
                _after_shard(i)
    except BaseException as e:
        err = e
    finally:
        if bar is not None:
            bar.close()
    _sync_errors(err, "computing shards")

    # -- merge (rank 0)
    err = None
    if rank == 0:
        try:
            tensors, meta = _merge(work, n_shards, ids, cfg, info, inputs, fingerprint, run_key)
            write_safetensors(path, tensors, meta)
            if labels_path is not None:
                MetaTokenDifficultyDataset(path).write_labels(labels_path, overwrite=overwrite)
            if not keep_work_dir:
                _remove_work_dir(work)
        except BaseException as e:
            err = e
    _sync_errors(err, "merging shards")
    return MetaTokenDifficultyDataset(path)


# ------------------------------------------------------------------------------------------ helpers
def _half_progress(bar: Any) -> Callable[[int], None]:
    """A progress callback that advances ``bar`` by half a sample per sample of one model's pass."""
    halves = [0]

    def update(k: int) -> None:
        before = halves[0] // 2
        halves[0] += k
        bar.update(halves[0] // 2 - before)

    return update

def _prompts_for(chunk: Sequence[Any], ex: Any, mt: Any, dialogue: bool, use_chat_template: bool) -> list[Any]:
    if not dialogue:
        return list(chunk)
    from .data import format_prompts

    return format_prompts(chunk, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                          tokenizer=ex.tokenizer, use_chat_template=use_chat_template, max_length=ex.max_length)


_WORK_MANIFEST = "manifest.json"


def _is_work_file(name: str) -> bool:
    """A name precompute writes in its work dir (the manifest, shards, and their atomic-write temps)."""
    if name == _WORK_MANIFEST or (name.startswith("shard_") and name.endswith(".safetensors")):
        return True
    # atomic_write temp files: ".<name>.<random>.tmp"
    return name.endswith(".tmp") and (name.startswith(f".{_WORK_MANIFEST}.") or name.startswith(".shard_"))


def _prepare_work_dir(work: Path, manifest: dict[str, Any]) -> None:
    """Create (or re-enter) the work dir; refuse a folder holding anything precompute did not write.

    The manifest records whether this run created the folder, so the cleanup removes the folder
    itself only then (and only when nothing else landed in it).
    """
    if work.exists() and not work.is_dir():
        raise DifficultyFileError(f"work dir {work} exists and is not a folder; pass another work_dir")
    mpath = work / _WORK_MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or old.get("shard_key") != manifest["shard_key"]:
            raise DifficultyFileError(f"work dir {work} holds shards of another run (other models, data, settings "
                                      "or shard size); delete it or pass another work_dir")
        return
    created = not work.exists()
    if not created:
        foreign = sorted(p.name for p in work.iterdir() if not _is_work_file(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DifficultyFileError(f"work dir {work} is not empty and was not created by precompute (it holds "
                                      f"{shown}); the work dir is deleted after the merge, so pass a new or empty "
                                      "folder as work_dir")
    work.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**manifest, "created_dir": created}, sort_keys=True, indent=1, default=str) + "\n"
    with atomic_write(mpath) as f:
        f.write(text.encode("utf-8"))


def _remove_work_dir(work: Path) -> None:
    """Delete what precompute wrote in ``work``; the folder itself only if precompute created it and it
    is empty then. Nothing else is ever deleted (the output or other files may live there)."""
    created = False
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        created = bool(json.loads((work / _WORK_MANIFEST).read_text(encoding="utf-8")).get("created_dir"))
    if not work.is_dir():
        return
    for p in work.iterdir():
        if p.is_file() and _is_work_file(p.name) and p.name != _WORK_MANIFEST:
            p.unlink(missing_ok=True)
    (work / _WORK_MANIFEST).unlink(missing_ok=True)  # last: it marks the folder as ours until the end
    if created:
        with contextlib.suppress(OSError):
            work.rmdir()  # fails (and is left) when anything else is in it


def _shard_ok(p: Path, shard_key: str, i: int) -> bool:
    if not p.exists():
        return False
    try:
        header, _ = read_safetensors_header(p)
    except DifficultyFileError:
        logger.warning("shard %s is unreadable; recomputing it", p)
        return False
    meta = header.get("__metadata__") or {}
    return meta.get("shard_key") == shard_key and meta.get("shard") == str(i)


def _merge(work: Path, n_shards: int, ids: list[str], cfg: CurriculumConfig, info: dict[str, Any],
           inputs: dict[str, Any], fingerprint: str, run_key: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Layer map, alignment and distances, one edge layer at a time over all shards."""
    mt = cfg.meta_token
    shards = []
    for i in range(n_shards):
        p = work / f"shard_{i:06d}.safetensors"
        header, start = read_safetensors_header(p)
        shards.append((p, header, start))
    c_shape = shards[0][1]["cloud"]["shape"]
    e_shape = shards[0][1]["edge"]["shape"]
    n_cloud, n_edge = int(c_shape[0]), int(e_shape[0])
    layer_map = resolve_layer_map(mt.layer_map, n_edge, n_cloud)
    if mt.top_k > n_edge:
        raise ValueError(f"meta_token.top_k={mt.top_k} exceeds the {n_edge} compared (edge) layers")
    n = len(ids)
    c_arr = [_memmap(p, h, s, "cloud") for p, h, s in shards]
    e_arr = [_memmap(p, h, s, "edge") for p, h, s in shards]
    held = sum(a.shape[1] for a in e_arr)
    if held != n or sum(a.shape[1] for a in c_arr) != n:
        raise DifficultyFileError(f"work dir {work}: shards hold {held} samples, expected {n}")
    align = mt.alignment
    extra: dict[str, Any] = {}
    align_info: dict[str, Any] = {"method": align}
    anchors = None
    if align == "relative":
        k = min(mt.num_anchors, n)
        if k < mt.num_anchors:
            logger.warning("num_anchors=%d > N=%d samples: using K=%d anchors (recorded in the file)",
                           mt.num_anchors, n, k)
        if k < 2:
            raise ValueError(f"alignment='relative' needs at least 2 samples for anchors, got N={n}")
        anchors = select_anchors(n, k, seed=cfg.training.seed)
        align_info.update(num_anchors=k, anchors=anchors.tolist(), anchor_ids=[ids[a] for a in anchors.tolist()],
                          centring="anchor mean per model and layer", seed=cfg.training.seed)
        extra["alignment.anchors"] = anchors
        c_centre = np.zeros((n_edge, int(c_shape[2])), dtype=np.float64)
        e_centre = np.zeros((n_edge, int(e_shape[2])), dtype=np.float64)
    elif align == "ridge":
        folds = min(5, n)
        align_info.update(alpha=mt.ridge_alpha, folds=folds, seed=cfg.training.seed,
                          space="standardised cloud space, cross-fitted (fit on the other folds)")
    raw = torch.empty(n, n_edge, dtype=torch.float64)
    for j, m in enumerate(layer_map):
        c = torch.from_numpy(np.concatenate([a[m] for a in c_arr]))
        e = torch.from_numpy(np.concatenate([a[j] for a in e_arr]))
        for side, x in (("cloud", c), ("edge", e)):
            bad = (~torch.isfinite(x)).any(dim=1)
            if bool(bad.any()):
                named = [ids[i] for i in bad.nonzero()[:, 0].tolist()[:10]]
                raise ValueError(f"{side} meta tokens of layer {m if side == 'cloud' else j} are NaN/Inf for "
                                 f"sample(s) {named} ({int(bad.sum())} in all)")
        ca, ea, ext = align_layer(c, e, align, anchors=anchors, alpha=mt.ridge_alpha,
                                  folds=min(5, n), seed=cfg.training.seed)
        if align == "relative":
            c_centre[j] = ext["cloud_centre"].numpy()
            e_centre[j] = ext["edge_centre"].numpy()
        raw[:, j] = layer_distances(ca[:, None, :], ea[:, None, :], mt.distance_metric,
                                    temperature=mt.kl_temperature)[:, 0]
    if align == "relative":
        extra["alignment.cloud_centre"] = c_centre
        extra["alignment.edge_centre"] = e_centre
    provenance = {"models": info, "inputs": inputs, "layer_map": layer_map, "alignment": align_info,
                  "pooling": {"cloud": info["cloud"]["pooling"], "edge": info["edge"]["pooling"]}}
    tensors, meta = _finalise(raw, ids, cfg, provenance, fingerprint, run_key=run_key)
    tensors.update(extra)
    return tensors, meta

