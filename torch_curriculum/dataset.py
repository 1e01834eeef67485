"""``MetaTokenDifficultyDataset``: per-sample, per-layer cloud/edge differences in one safetensors file.

Writing: :meth:`MetaTokenDifficultyDataset.precompute` (implemented in
:mod:`torch_curriculum.precompute`: shards, resume, distribution, merge) and
:meth:`MetaTokenDifficultyDataset.from_distances` (from ready ``[N, L]`` distances).

File layout (safetensors; all ``[N]``/``[N, L]`` tensors in sample order):

==============================  =========  ==============================================
tensor                          dtype      meaning
==============================  =========  ==============================================
``raw_layer_diffs``             F64 [N,L]  raw per-layer distances (metric of the metadata)
``layer_diffs``                 F64 [N,L]  normalised across samples, per layer
``scores.{mean,max,topK_mean,   F64 [N]    aggregates of ``layer_diffs``
weighted_mean}``
``difficulty``                  F64 [N]    the primary score
``percentile``                  F64 [N]    fraction of samples with primary score <= own
``stage``                       I64 [N]    1-based curriculum stage
``sample_ids.utf8`` /           U8 / I64   ids, utf-8 bytes and N+1 offsets
``sample_ids.offsets``
``alignment.*``                 (opt.)     anchors and centres of the ``relative`` alignment
==============================  =========  ==============================================

Metadata (str -> str): ``format``, ``schema_version``, ``library_version``, ``num_samples``,
``num_layers``, ``fingerprint``, ``run_key`` and ``provenance`` (a JSON object: models, pooling,
alignment, anchors, layer map, metric, normalisation, K, tau, stage percentiles, system prompt ...).

Reading (``MetaTokenDifficultyDataset(path)``): only the JSON header is parsed; tensors are
memory-mapped (``numpy.memmap``, copy-on-write) on first access, so opening a 1M x 32 file costs
milliseconds and no RAM for the data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import atomic_write
from ._version import __version__
from .config import CurriculumConfig
from .difficulty import (
    assign_stages,
    normalize_layers,
    percentiles,
    score_all,
    score_name,
)

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "DifficultyFileError",
    "MetaTokenDifficultyDataset",
    "read_safetensors_header",
    "write_safetensors",
]

logger = logging.getLogger(__name__)

SCHEMA = "torch_curriculum.difficulty"
SCHEMA_VERSION = "1"
_DT = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "U8": np.uint8}
_DT_NAME = {np.dtype(v): k for k, v in _DT.items()}
_MAX_HEADER = 100 * 1024 * 1024


class DifficultyFileError(ValueError):
    """A difficulty file (or shard/work dir) is truncated, corrupted, of another schema/library major
    version, or does not match the data it is used with; the message names the file."""


# ------------------------------------------------------------------------------------------ file I/O
def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(x)
    if a.dtype not in _DT_NAME:
        raise TypeError(f"unsupported dtype {a.dtype}; expected one of float64, float32, int64, uint8")
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def write_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file deterministically and atomically.

    Tensors are laid out in sorted name order, the header JSON has sorted keys and no timestamps,
    so identical inputs give identical bytes. The file appears under its name only when complete
    (temp file in the same folder + fsync + ``os.replace``).

    Args:
        path (str | Path): destination.
        tensors (Mapping[str, array-like]): name -> torch tensor / numpy array (f64, f32, i64, u8).
        metadata (Mapping[str, str]): string metadata.

    Raises:
        TypeError: a non-string metadata value or an unsupported dtype.
    """
    path = Path(path)
    arrays = {k: _as_numpy(v) for k, v in tensors.items()}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata must map str -> str; {k!r} -> {type(v).__name__}")
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(arrays):
        a = arrays[name]
        header[name] = {"dtype": _DT_NAME[a.dtype.newbyteorder("=")], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hb += b" " * (-len(hb) % 8)
    with atomic_write(path) as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name in sorted(arrays):
            f.write(memoryview(arrays[name]).cast("B") if arrays[name].nbytes else b"")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """Parse and check a safetensors header without reading any tensor data.

    Returns:
        tuple[dict, int]: the header (with ``__metadata__``) and the byte offset where data starts.

    Raises:
        DifficultyFileError: missing, too short, bad header JSON, unknown dtype, offsets that do not
            tile the data region, or a file size that does not match (truncated / trailing bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise DifficultyFileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise DifficultyFileError(f"{path}: truncated ({size} bytes), not a safetensors file")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise DifficultyFileError(f"{path}: corrupted or truncated header (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DifficultyFileError(f"{path}: corrupted header ({e})") from None
    if not isinstance(header, dict):
        raise DifficultyFileError(f"{path}: corrupted header (not a JSON object)")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DT[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise DifficultyFileError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if end - begin != math.prod(shape) * np.dtype(dtype).itemsize:
            raise DifficultyFileError(f"{path}: tensor {name!r}: offsets {begin}..{end} do not match shape {shape}")
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise DifficultyFileError(f"{path}: tensor {name!r} starts at {begin}, expected {pos} (corrupted header)")
        pos = end
    if size != 8 + n + pos:
        what = "truncated" if size < 8 + n + pos else "has trailing bytes"
        raise DifficultyFileError(f"{path}: {what}: the header describes {8 + n + pos} bytes, the file has {size}")
    return header, 8 + n


def _memmap(path: Path, header: Mapping[str, Any], data_start: int, name: str) -> np.ndarray:
    info = header[name]
    shape = tuple(int(s) for s in info["shape"])
    dtype = np.dtype(_DT[info["dtype"]]).newbyteorder("<")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dtype)
    # copy-on-write: torch.from_numpy needs a writable array; nothing is read until touched
    return np.memmap(path, dtype=dtype, mode="c", offset=data_start + int(info["data_offsets"][0]), shape=shape)


def _encode_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    blobs = [s.encode("utf-8") for s in ids]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def _check_ids(ids: Sequence[Any], n: int) -> list[str]:
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} sample ids for {n} samples")
    for i, s in enumerate(ids):
        if not isinstance(s, str) or not s:
            raise ValueError(f"sample id at index {i} must be a non-empty string, got {s!r}")
    if len(set(ids)) != n:
        seen: set[str] = set()
        dup = next(s for s in ids if s in seen or seen.add(s))
        raise ValueError(f"duplicate sample id {dup!r}")
    return ids


def _major(version: str) -> str:
    return str(version).split(".")[0]


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


# ------------------------------------------------------------------------------------------ dataset
class MetaTokenDifficultyDataset(Dataset):
    """A memory-mapped difficulty file, optionally wrapping the data set it scores.

    Args:
        path (str | Path): a file written by :meth:`precompute` or :meth:`from_distances`.
        base_dataset (Dataset | None): the data set the file scores (same order). When it exposes
            ``fingerprint`` (str or method) or ``samples`` (``DialogueSample`` list), it must match.
        return_difficulty (bool): ``__getitem__`` returns ``(item, difficulty)``. Defaults to False.
        fingerprint (str | None): expected data fingerprint (checked against the file's).

    Raises:
        DifficultyFileError: truncated/corrupted file, another schema or library major version,
            missing tensors, or a sample count / fingerprint that does not match.

    Example:
        >>> ds = MetaTokenDifficultyDataset("difficulty.safetensors", my_dataset)  # doctest: +SKIP
        >>> ds.layer_diffs.shape, ds.difficulty[:3], ds.stage[:3]                  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, base_dataset: Any = None, *, return_difficulty: bool = False,
                 fingerprint: str | None = None):
        self.path = Path(path)
        self._header, self._data_start = read_safetensors_header(self.path)
        meta = self._header.get("__metadata__") or {}
        if meta.get("format") != SCHEMA:
            raise DifficultyFileError(f"{self.path}: not a torch_curriculum difficulty file "
                                      f"(format={meta.get('format')!r})")
        if _major(meta.get("schema_version", "?")) != _major(SCHEMA_VERSION):
            raise DifficultyFileError(f"{self.path}: schema version {meta.get('schema_version')!r}, this library "
                                      f"reads {SCHEMA_VERSION}; recompute the file")
        if _major(meta.get("library_version", "?")) != _major(__version__):
            raise DifficultyFileError(f"{self.path}: written by torch_curriculum {meta.get('library_version')!r}, "
                                      f"incompatible with {__version__} (major version differs); recompute the file")
        try:
            self._n = int(meta["num_samples"])
            self._l = int(meta["num_layers"])
            self._prov = json.loads(meta["provenance"])
        except (KeyError, ValueError) as e:
            raise DifficultyFileError(f"{self.path}: corrupted metadata ({e})") from None
        self._score_keys = [k[len("scores."):] for k in self._header if k.startswith("scores.")]
        expect = {"raw_layer_diffs": ("F64", [self._n, self._l]), "layer_diffs": ("F64", [self._n, self._l]),
                  "difficulty": ("F64", [self._n]), "percentile": ("F64", [self._n]), "stage": ("I64", [self._n]),
                  "sample_ids.offsets": ("I64", [self._n + 1])}
        for k in self._score_keys:
            expect[f"scores.{k}"] = ("F64", [self._n])
        for name, (dt, shape) in expect.items():
            info = self._header.get(name)
            if info is None:
                raise DifficultyFileError(f"{self.path}: tensor {name!r} is missing")
            if info["dtype"] != dt or list(info["shape"]) != shape:
                raise DifficultyFileError(f"{self.path}: tensor {name!r} is {info['dtype']}{info['shape']}, "
                                          f"expected {dt}{shape}")
        if "sample_ids.utf8" not in self._header:
            raise DifficultyFileError(f"{self.path}: tensor 'sample_ids.utf8' is missing")
        self._arrays: dict[str, np.ndarray] = {}
        self._ids: list[str] | None = None
        self.base_dataset = base_dataset
        self.return_difficulty = bool(return_difficulty)
        self._check_base(base_dataset, fingerprint)

    # -- checks
    def _check_base(self, base: Any, fingerprint: str | None) -> None:
        file_fp = self.metadata.get("fingerprint")
        if base is not None:
            if hasattr(base, "__len__") and len(base) != self._n:
                raise DifficultyFileError(f"{self.path}: holds {self._n} samples but the base dataset has "
                                          f"{len(base)}; the file belongs to another data set")
            if fingerprint is None:
                fp = getattr(base, "fingerprint", None)
                if callable(fp):
                    fp = fp()
                if fp is None and getattr(base, "samples", None) is not None:
                    samples = list(base.samples)
                    if samples and all(hasattr(s, "persona") and hasattr(s, "context") for s in samples):
                        from .data import data_fingerprint
                        fp = data_fingerprint(samples)
                fingerprint = fp
        if fingerprint is not None and fingerprint != file_fp:
            raise DifficultyFileError(f"{self.path}: data fingerprint {file_fp!r} does not match the data set's "
                                      f"{fingerprint!r}; the file was computed on other data (or another order)")

    # -- lazy tensors
    def _get(self, name: str) -> torch.Tensor:
        if name not in self._arrays:
            self._arrays[name] = _memmap(self.path, self._header, self._data_start, name)
        return torch.from_numpy(self._arrays[name])

    @property
    def metadata(self) -> dict[str, str]:
        """The raw str -> str safetensors metadata."""
        return dict(self._header.get("__metadata__") or {})

    @property
    def provenance(self) -> dict[str, Any]:
        """The parsed provenance JSON (models, pooling, alignment, layer map, metric, K, tau ...)."""
        return dict(self._prov)

    @property
    def num_layers(self) -> int:
        return self._l

    @property
    def top_k(self) -> int:
        return int(self._prov["top_k"])

    @property
    def raw_layer_diffs(self) -> torch.Tensor:
        """``[N, L]`` float64 raw distances (memory-mapped)."""
        return self._get("raw_layer_diffs")

    @property
    def layer_diffs(self) -> torch.Tensor:
        """``[N, L]`` float64 normalised distances (memory-mapped)."""
        return self._get("layer_diffs")

    @property
    def difficulty(self) -> torch.Tensor:
        """``[N]`` primary score."""
        return self._get("difficulty")

    @property
    def percentile(self) -> torch.Tensor:
        return self._get("percentile")

    @property
    def stage(self) -> torch.Tensor:
        """``[N]`` int64 stages, 1-based."""
        return self._get("stage")

    @property
    def sample_ids(self) -> list[str]:
        """The N sample ids (decoded on first access)."""
        if self._ids is None:
            blob = self._get("sample_ids.utf8").numpy().tobytes()
            off = self._get("sample_ids.offsets").tolist()
            if off[0] != 0 or off[-1] != len(blob) or any(b < a for a, b in itertools.pairwise(off)):
                raise DifficultyFileError(f"{self.path}: corrupted sample id offsets")
            self._ids = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(off)]
        return self._ids

    def scores(self, name: str) -> torch.Tensor:
        """An aggregate: ``mean``, ``max``, ``weighted_mean``, ``topk_mean`` (= ``top{K}_mean``) or ``top{K}_mean``.

        Raises:
            KeyError: unknown name (the message lists the available ones).
        """
        key = score_name("topk_mean", self.top_k) if name == "topk_mean" else name
        if key not in self._score_keys:
            raise KeyError(f"unknown score {name!r}; available: {', '.join(sorted(self._score_keys))}, topk_mean")
        return self._get(f"scores.{key}")

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        if self.base_dataset is None:
            return {"index": int(i), "sample_id": self.sample_ids[i], "difficulty": float(self.difficulty[i]),
                    "percentile": float(self.percentile[i]), "stage": int(self.stage[i]),
                    "layer_diffs": self.layer_diffs[i].clone()}
        item = self.base_dataset[i]
        return (item, float(self.difficulty[i])) if self.return_difficulty else item

    def write_labels(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the seed-schema label file (JSON/JSONL by suffix) from this file's normalised diffs."""
        from .labels import write_labels

        p = self._prov
        return write_labels(path, self.sample_ids, self.layer_diffs.clone(), top_k=int(p["top_k"]), tau=p["tau"],
                            stage_percentiles=p["stage_percentiles"], primary=p["primary_score"],
                            metadata={"difficulty_file": str(self.path.name), **p}, overwrite=overwrite)

    # ------------------------------------------------------------------------------ writing
    @classmethod
    def from_distances(cls, raw: Any, sample_ids: Sequence[str], path: str | Path,
                       config: CurriculumConfig | None = None, *, metadata: Mapping[str, Any] | None = None,
                       fingerprint: str | None = None, extra_tensors: Mapping[str, Any] | None = None,
                       overwrite: bool = False) -> MetaTokenDifficultyDataset:
        """Write a difficulty file from raw ``[N, L]`` distances (no models needed) and open it.

        Normalisation, aggregates, primary score, percentiles and stages follow ``config``.

        Args:
            raw (array-like): ``[N, L]`` raw per-layer distances.
            sample_ids (Sequence[str]): N unique non-empty ids.
            path (str | Path): output ``.safetensors``.
            config (CurriculumConfig | None): scoring settings; None = defaults.
            metadata (Mapping | None): extra provenance (JSON-serialisable), stored under the
                provenance JSON.
            fingerprint (str | None): data fingerprint; None = sha256 of the ids.
            extra_tensors (Mapping | None): more tensors to store (names must not clash).
            overwrite (bool): replace an existing file. Defaults to False.

        Raises:
            ValueError: bad shape, ids, NaN/Inf (the sample ids are named), K > L.
            FileExistsError: the file exists and ``overwrite`` is False.
        """
        cfg = config or CurriculumConfig()
        d = torch.as_tensor(raw).to(torch.float64)
        if d.dim() != 2 or d.shape[0] < 1 or d.shape[1] < 1:
            raise ValueError(f"raw distances must have shape [N, L] with N, L >= 1, got {tuple(d.shape)}")
        ids = _check_ids(sample_ids, d.shape[0])
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if fingerprint is None:
            fingerprint = hashlib.sha256(_json(ids).encode("ascii")).hexdigest()
        tensors, meta = _finalise(d, ids, cfg, dict(metadata or {}), fingerprint)
        for k, v in (extra_tensors or {}).items():
            if k in tensors:
                raise ValueError(f"extra tensor name {k!r} clashes with a standard tensor")
            tensors[k] = v
        write_safetensors(path, tensors, meta)
        return cls(path)

    @classmethod
    def precompute(cls, samples: Sequence[Any], cloud: Any, edge: Any, path: str | Path,
                   config: CurriculumConfig | None = None, **kwargs: Any) -> MetaTokenDifficultyDataset:
        """Run both models once over ``samples`` and write the difficulty file (and labels).

        A thin alias of :func:`torch_curriculum.precompute.precompute` (same arguments, same
        result); see there for the arguments, the work dir, resume and distribution.
        """
        from .precompute import precompute

        return precompute(samples, cloud, edge, path, config, **kwargs)


# ------------------------------------------------------------------------------------------ helpers
def _scoring_settings(cfg: CurriculumConfig) -> dict[str, Any]:
    mt = cfg.meta_token
    return {"metric": mt.distance_metric, "kl_temperature": mt.kl_temperature, "alignment": mt.alignment,
            "num_anchors": mt.num_anchors, "ridge_alpha": mt.ridge_alpha, "layer_map": mt.layer_map,
            "normalization": mt.normalization, "top_k": mt.top_k, "tau": mt.tau,
            "primary_score": mt.primary_score, "stage_percentiles": list(cfg.curriculum.stage_percentiles),
            "seed": cfg.training.seed}


def _finalise(raw: torch.Tensor, ids: list[str], cfg: CurriculumConfig, provenance: dict[str, Any],
              fingerprint: str, run_key: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Normalise, aggregate, rank and stage; the tensors and metadata of a difficulty file."""
    mt = cfg.meta_token
    bad = (~torch.isfinite(raw)).any(dim=1)
    if bool(bad.any()):
        named = [ids[i] for i in bad.nonzero()[:, 0].tolist()[:10]]
        raise ValueError(f"NaN/Inf distances for sample(s) {named} ({int(bad.sum())} in all); refusing to write")
    n, n_layers = raw.shape
    if mt.top_k > n_layers:
        raise ValueError(f"meta_token.top_k={mt.top_k} exceeds the number of layers L={n_layers}")
    tau = mt.tau if mt.tau is not None else n_layers / 3.0
    norm = normalize_layers(raw, mt.normalization)
    scores = score_all(norm, k=mt.top_k, tau=tau)
    primary = scores[score_name(mt.primary_score, mt.top_k)]
    pct = percentiles(primary)
    stage = assign_stages(pct, cfg.curriculum.stage_percentiles)
    utf8, offsets = _encode_ids(ids)
    tensors: dict[str, Any] = {"raw_layer_diffs": raw, "layer_diffs": norm, "difficulty": primary,
                               "percentile": pct, "stage": stage, "sample_ids.utf8": utf8,
                               "sample_ids.offsets": offsets}
    tensors.update({f"scores.{k}": v for k, v in scores.items()})
    settings = _scoring_settings(cfg)
    prov = {**settings, **provenance, "tau": tau, "tau_configured": mt.tau,
            "primary_score_name": score_name(mt.primary_score, mt.top_k), "fingerprint": fingerprint,
            "library": "torch_curriculum", "library_version": __version__, "schema_version": SCHEMA_VERSION}
    meta = {"format": SCHEMA, "schema_version": SCHEMA_VERSION, "library_version": __version__,
            "num_samples": str(n), "num_layers": str(n_layers), "fingerprint": fingerprint,
            "run_key": run_key or hashlib.sha256(_json(prov).encode()).hexdigest(), "provenance": _json(prov)}
    return tensors, meta
