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

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
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
    "rows_fingerprint",
    "write_safetensors",
]

logger = logging.getLogger(__name__)

SCHEMA = "torch_curriculum.difficulty"
SCHEMA_VERSION = "1"
_DT = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "U8": np.uint8}
_DT_NAME = {np.dtype(v): k for k, v in _DT.items()}
_MAX_HEADER = 100 * 1024 * 1024
_CHECKSUMS = "checksums"
_CHUNK = 4 << 20
# tensors: sha256 of the concatenated sha256s of 4 MiB chunks; metadata values and fields: plain sha256
_ALGORITHM = "sha256-4MiB-chunks"


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


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_fields(value: str) -> dict[str, Any] | None:
    """The top-level fields of a metadata value that is a canonical JSON object (as :func:`_json`
    writes it), so each field can carry its own checksum; None for any other value."""
    try:
        obj = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or _json(obj) != value:
        return None
    return obj


def _metadata_checksums(metadata: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {k: _digest(v.encode("utf-8")) for k, v in sorted(metadata.items())},
                           "fields": {}}
    for k, v in sorted(metadata.items()):
        obj = _canonical_fields(v)
        if obj is not None:
            out["fields"][k] = {f: _digest(_json(obj[f]).encode("utf-8")) for f in sorted(obj)}
    return out


def write_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file deterministically and atomically, with checksums.

    Tensors are laid out in sorted name order, the header JSON has sorted keys and no timestamps,
    so identical inputs give identical bytes. The file appears under its name only when complete
    (temp file in the same folder + fsync + ``os.replace``).

    Integrity: the metadata entry ``checksums`` (reserved: a value passed under that key is
    replaced) holds, as JSON, a digest of every tensor's data bytes (``tensors``: sha256 over the
    sha256s of its consecutive 4 MiB chunks, so large tensors hash on several threads), the sha256 of every
    other metadata value (``metadata``) and, for a value that is a canonical JSON object such as
    ``provenance``, of each of its top-level fields (``fields``), so an edit is reported by name.
    :func:`read_safetensors_header` checks the metadata and the tensor names; the tensor digests
    are checked when a tensor is first read (:class:`MetaTokenDifficultyDataset`) or by
    :meth:`MetaTokenDifficultyDataset.verify`.

    Args:
        path (str | Path): destination.
        tensors (Mapping[str, array-like]): name -> torch tensor / numpy array (f64, f32, i64, u8).
        metadata (Mapping[str, str]): string metadata.

    Raises:
        TypeError: a non-string metadata value or an unsupported dtype.

    Example:
        >>> write_safetensors("x.safetensors", {"a": np.arange(3)}, {"note": "hi"})  # doctest: +SKIP
        >>> read_safetensors_header("x.safetensors")[0]["a"]["shape"]                 # doctest: +SKIP
        [3]
    """
    path = Path(path)
    arrays = {k: _as_numpy(v) for k, v in tensors.items()}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata must map str -> str; {k!r} -> {type(v).__name__}")
    meta = {k: v for k, v in metadata.items() if k != _CHECKSUMS}
    sums = {"algorithm": _ALGORITHM, "tensors": {k: _array_digest(a) for k, a in sorted(arrays.items())},
            **_metadata_checksums(meta)}
    meta[_CHECKSUMS] = _json(sums)
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
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


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _check_metadata(path: Path, header: Mapping[str, Any]) -> None:
    """Compare the metadata and the tensor names with the ``checksums`` entry (when there is one)."""
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or any(not isinstance(v, str) for v in meta.values()):
        raise DifficultyFileError(f"{path}: corrupted header (metadata must map str -> str)")
    if _CHECKSUMS not in meta:
        return
    try:
        sums = json.loads(meta[_CHECKSUMS])
        t_sums, m_sums, f_sums = sums["tensors"], sums["metadata"], sums["fields"]
        if sums["algorithm"] != _ALGORITHM or not all(isinstance(x, dict) for x in (t_sums, m_sums, f_sums)):
            raise ValueError
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DifficultyFileError(f"{path}: corrupted header (the 'checksums' metadata entry is unreadable)") from None
    names = {k for k in header if k != "__metadata__"}
    for name in sorted(names ^ set(t_sums)):
        what = "has no recorded checksum" if name in names else "is recorded in the checksums but missing"
        raise DifficultyFileError(f"{path}: tensor {name!r} {what} (corrupted or edited header)")
    others = {k: v for k, v in meta.items() if k != _CHECKSUMS}
    for key in sorted(set(others) ^ set(m_sums)):
        what = "has no recorded checksum" if key in others else "is recorded in the checksums but missing"
        raise DifficultyFileError(f"{path}: metadata field {key!r} {what} (corrupted or edited header)")
    for key in sorted(others):
        fields = f_sums.get(key)
        if _digest(others[key].encode("utf-8")) == m_sums[key] and (
                not isinstance(fields, dict) or fields == _metadata_checksums({key: others[key]})["fields"].get(key)):
            continue
        obj = _canonical_fields(others[key]) if isinstance(fields, dict) else None
        if obj is not None:
            for f in sorted(set(obj) | set(fields)):
                if f not in obj or f not in fields or _digest(_json(obj[f]).encode("utf-8")) != fields[f]:
                    raise DifficultyFileError(f"{path}: metadata field '{key}.{f}' does not match its checksum "
                                              f"(value {_json(obj.get(f))[:80]}); the file was edited or corrupted")
        raise DifficultyFileError(f"{path}: metadata field {key!r} does not match its checksum; the file was "
                                  "edited or corrupted")
    expected = _metadata_checksums(others)
    if expected["metadata"] != m_sums or expected["fields"] != f_sums or _json(sums) != meta[_CHECKSUMS]:
        raise DifficultyFileError(f"{path}: the 'checksums' metadata entry is corrupted (it does not match the "
                                  "metadata it describes)")


def read_safetensors_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """Parse and check a safetensors header without reading any tensor data.

    When the metadata holds the ``checksums`` entry written by :func:`write_safetensors`, every
    other metadata value (and each field of a JSON-object value such as ``provenance``) and the
    set of tensor names are checked against it here; tensor data is checked on first read.

    Args:
        path (str | Path): the file.

    Returns:
        tuple[dict, int]: the header (with ``__metadata__``) and the byte offset where data starts.

    Raises:
        DifficultyFileError: missing, a directory, too short, bad header JSON (or a duplicated key),
            unknown dtype, offsets that do not tile the data region, a file size that does not match
            (truncated / trailing bytes), or metadata / tensor names that do not match the recorded
            checksums (the field or tensor is named).

    Example:
        >>> header, start = read_safetensors_header("difficulty.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        raise DifficultyFileError(f"{path}: is a directory, expected a .safetensors file")
    if not path.is_file():
        raise DifficultyFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise DifficultyFileError(f"{path}: truncated ({size} bytes), not a safetensors file")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise DifficultyFileError(f"{path}: corrupted or truncated header (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
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
            if any(s < 0 for s in shape) or begin < 0:
                raise ValueError
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
    _check_metadata(path, header)
    return header, 8 + n


def _chunk_digests(n: int, read: Callable[[int, int, memoryview], memoryview]) -> str:
    """The tensor digest: sha256 over the sha256s of consecutive 4 MiB chunks (``_CHUNK``), so large
    tensors hash on several threads (hashlib and file reads release the GIL). ``read(lo, hi, buf)``
    returns bytes lo..hi, possibly read into ``buf`` (a reusable anonymous mapping per thread, so
    verification does not grow the heap)."""
    import mmap
    import threading

    starts = list(range(0, n, _CHUNK)) or [0]
    local = threading.local()
    buffers: list[mmap.mmap] = []

    def one(lo: int) -> bytes:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = mmap.mmap(-1, _CHUNK)
            buffers.append(buf)
        return hashlib.sha256(read(lo, min(n, lo + _CHUNK), memoryview(buf))).digest()

    try:
        if len(starts) > 2:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(starts))) as pool:
                parts = list(pool.map(one, starts))
        else:
            parts = [one(lo) for lo in starts]
    finally:
        for buf in buffers:
            buf.close()
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _array_digest(a: np.ndarray) -> str:
    view = memoryview(a).cast("B") if a.nbytes else memoryview(b"")
    return _chunk_digests(a.nbytes, lambda lo, hi, _buf: view[lo:hi])


def _verify_tensor(path: Path, header: Mapping[str, Any], data_start: int, name: str) -> None:
    """Hash one tensor's bytes (read from the file with ``preadv``, not through the memory map, so
    RSS does not grow) against its recorded checksum."""
    sums = json.loads((header.get("__metadata__") or {})[_CHECKSUMS])["tensors"]
    begin, end = (int(x) for x in header[name]["data_offsets"])
    fd = os.open(path, os.O_RDONLY)
    try:
        def read(lo: int, hi: int, buf: memoryview) -> memoryview:
            view = buf[:hi - lo]
            got = 0
            while got < hi - lo:
                k = os.preadv(fd, [view[got:]], data_start + begin + lo + got)
                if k <= 0:
                    raise DifficultyFileError(f"{path}: truncated while reading tensor {name!r}")
                got += k
            return view

        digest = _chunk_digests(end - begin, read)
    finally:
        os.close(fd)
    if digest != sums.get(name):
        raise DifficultyFileError(f"{path}: tensor {name!r} does not match its checksum (digest {digest[:16]}…, "
                                  f"recorded {str(sums.get(name))[:16]}…); the file is corrupted")


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
        if not s.isascii():
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"sample id at index {i} ({s!r}) is not valid Unicode (a lone surrogate) and "
                                 "cannot be stored as UTF-8") from None
    if len(set(ids)) != n:
        seen: set[str] = set()
        dup = next(s for s in ids if s in seen or seen.add(s))
        raise ValueError(f"duplicate sample id {dup!r}")
    return ids


def _major(version: str) -> str:
    return str(version).split(".")[0]


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


# ------------------------------------------------------------------------------------------ base data
def _item_id(item: Any) -> str | None:
    """The ``sample_id`` an item carries: an attribute (``DialogueSample``, ``LoRAGenExample``), a
    ``"sample_id"`` key, or the ``"example"`` of a ``LoRAGenDataset`` item; None when it has none."""
    sid = getattr(item, "sample_id", None)
    if sid is None and isinstance(item, Mapping):
        sid = item.get("sample_id")
        if sid is None and "example" in item:
            sid = getattr(item["example"], "sample_id", None)
    return sid if isinstance(sid, str) else None


def _cheap_ids(base: Any) -> list[str] | None:
    """Ids of a base data set's items when they can be read without building every item."""
    ids = getattr(base, "sample_ids", None)
    if isinstance(ids, (list, tuple)) and all(isinstance(x, str) for x in ids):
        return list(ids)
    for holder in (getattr(base, "samples", None), getattr(base, "examples", None), base):
        if isinstance(holder, (list, tuple)) and holder:
            got = [_item_id(x) for x in holder]
            if all(g is not None for g in got):
                return got  # type: ignore[return-value]
    return None


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "datasets" and hasattr(obj, "column_names") \
        and hasattr(obj, "iter")


def rows_fingerprint(rows: Any, columns: Sequence[str] | None = None) -> str:
    """sha256 over a table's rows, in order: a Hugging Face ``datasets.Dataset`` or an iterable of dicts.

    Shuffling, filtering, selecting another split or editing a value changes it; adding a column
    does not when ``columns`` names the ones that matter. Precompute records it (with the columns)
    for row inputs so that :class:`MetaTokenDifficultyDataset` can check a ``datasets.Dataset``
    passed as ``base_dataset``.

    Args:
        rows: a ``datasets.Dataset`` or an iterable of mappings.
        columns (Sequence[str] | None): the columns hashed; None = all, sorted by name.

    Returns:
        str: 64 hex digits.

    Raises:
        KeyError: a named column is missing (the message lists the available ones).

    Example:
        >>> rows_fingerprint([{"q": "hi", "a": "yo"}]) == rows_fingerprint([{"a": "yo", "q": "hi"}])
        True
    """
    h = hashlib.sha256(b"torch_curriculum.rows.v1\n")
    if _is_hf_dataset(rows):
        cols = sorted(rows.column_names) if columns is None else list(columns)
        missing = [c for c in cols if c not in rows.column_names]
        if missing:
            raise KeyError(f"column(s) {missing} not in the dataset; available: {rows.column_names}")
        h.update(_json(cols).encode("ascii") + b"\n")
        for batch in rows.select_columns(cols).iter(batch_size=1024):
            for values in zip(*(batch[c] for c in cols)):
                h.update(_json(list(values)).encode("ascii") + b"\n")
        return h.hexdigest()
    cols: list[str] | None = None if columns is None else list(columns)
    for i, row in enumerate(rows):
        if cols is None:  # all columns, sorted, as the first row has them
            cols = sorted(row)
        if i == 0:
            h.update(_json(cols).encode("ascii") + b"\n")
        missing = [c for c in cols if c not in row]
        if missing:
            raise KeyError(f"row {i}: column(s) {missing} missing; it has {sorted(row)}")
        h.update(_json([row[c] for c in cols]).encode("ascii") + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ dataset
class MetaTokenDifficultyDataset(Dataset):
    """A memory-mapped difficulty file, optionally wrapping the data set it scores.

    Opening parses the header only (and checks its metadata against the recorded checksums);
    each tensor is memory-mapped and verified against its sha256 the first time it is read, and
    :meth:`verify` checks everything at once. Pickled (DataLoader workers with ``spawn``), the
    dataset carries the path and a digest of the header, not the arrays; the worker re-opens the
    memory map and refuses a file that changed in between.

    Alignment with ``base_dataset`` (item i must be the sample the file scores at i):

    - items that carry ids (``.sample_id`` of ``DialogueSample`` / ``LoRAGenExample``, a
      ``"sample_id"`` key, ``LoRAGenDataset`` items) are compared with the file's ids: all at
      once when the ids are at hand (a list, ``.samples``, ``.examples``, ``.sample_ids``), else
      item by item as ``__getitem__`` fetches them;
    - a ``fingerprint`` (str or method) or ``samples`` (``DialogueSample`` list) must match the
      file's data fingerprint;
    - a Hugging Face ``datasets.Dataset``: its id column (``id_column``, the column precompute
      recorded, or ``sample_id``) is compared with the file's ids; without one, a fingerprint of
      its rows (:func:`rows_fingerprint`) must match the one the file records.

    Any mismatch is a :class:`DifficultyFileError` naming the first mismatching index and both ids.

    Args:
        path (str | Path): a file written by :meth:`precompute` or :meth:`from_distances`.
        base_dataset (Dataset | None): the data set the file scores, in the file's order.
        return_difficulty (bool): ``__getitem__`` returns ``(item, difficulty)``. Defaults to False.
        fingerprint (str | None): expected data fingerprint (checked against the file's).
        id_column (str | None): for a ``datasets.Dataset`` base: the column holding the sample ids.
        verify (bool): check each tensor's checksum on first read and require the file to record
            checksums. Defaults to True; False opens files written without them (a warning is logged).

    Raises:
        DifficultyFileError: truncated/corrupted file, another schema or library major version,
            missing tensors, metadata that does not match its checksums, or a base dataset whose
            length, ids or fingerprint do not match.

    Example:
        >>> ds = MetaTokenDifficultyDataset("difficulty.safetensors", my_dataset)  # doctest: +SKIP
        >>> ds.layer_diffs.shape, ds.difficulty[:3], ds.stage[:3]                  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, base_dataset: Any = None, *, return_difficulty: bool = False,
                 fingerprint: str | None = None, id_column: str | None = None, verify: bool = True):
        self._open(path, verify)
        self.base_dataset = base_dataset
        self.return_difficulty = bool(return_difficulty)
        self._check_items = False
        self._check_base(base_dataset, fingerprint, id_column)

    def _open(self, path: str | Path, verify: bool) -> None:
        self._path = Path(path)
        self._verify_reads = bool(verify)
        self._header, self._data_start = read_safetensors_header(self._path)
        self._header_digest = hashlib.sha256(_json(self._header).encode("ascii")).hexdigest()
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
        if _CHECKSUMS not in meta:
            if verify:
                raise DifficultyFileError(f"{self.path}: records no checksums (written by an older torch_curriculum "
                                          "or another tool), so its integrity cannot be checked; recompute it, or "
                                          "open it with verify=False to use it unchecked")
            logger.warning("%s records no checksums; opened unchecked (verify=False)", self.path)
        try:
            self._n = int(meta["num_samples"])
            self._l = int(meta["num_layers"])
            self._prov = json.loads(meta["provenance"])
            if self._n < 1 or self._l < 1 or not isinstance(self._prov, dict):
                raise ValueError("num_samples/num_layers must be >= 1 and provenance a JSON object")
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
        info = self._header.get("sample_ids.utf8")
        if info is None:
            raise DifficultyFileError(f"{self.path}: tensor 'sample_ids.utf8' is missing")
        if info["dtype"] != "U8" or len(info["shape"]) != 1:
            raise DifficultyFileError(f"{self.path}: tensor 'sample_ids.utf8' is {info['dtype']}{info['shape']}, "
                                      "expected U8[bytes]")
        self._arrays: dict[str, np.ndarray] = {}
        self._verified: set[str] = set()
        self._ids: list[str] | None = None

    # -- pickling: the path and a digest of the header, never the arrays
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self._path), "header_sha256": self._header_digest, "verify": self._verify_reads,
                "verified": sorted(self._verified), "base_dataset": self.base_dataset,
                "return_difficulty": self.return_difficulty, "check_items": self._check_items}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(state["path"], state["verify"])
        if self._header_digest != state["header_sha256"]:
            raise DifficultyFileError(f"{self.path}: the file changed after this dataset was opened (its header "
                                      "differs from the one checked then); open it again")
        self._verified = set(state["verified"])
        self.base_dataset = state["base_dataset"]
        self.return_difficulty = state["return_difficulty"]
        self._check_items = state["check_items"]

    # -- checks
    def _mismatch(self, i: int, theirs: Any, what: str) -> DifficultyFileError:
        return DifficultyFileError(
            f"{self.path}: {what} item {i} has sample_id {theirs!r} but the file scores {self.sample_ids[i]!r} at "
            f"index {i}; the base dataset is not in the file's order (reordered, shuffled, filtered or other data)")

    def _compare_ids(self, ids: Sequence[Any], what: str) -> None:
        mine = self.sample_ids
        for i, (a, b) in enumerate(zip(ids, mine)):
            if a != b:
                raise self._mismatch(i, a, what)

    def _check_base(self, base: Any, fingerprint: str | None, id_column: str | None) -> None:
        file_fp = self.metadata.get("fingerprint")
        checked = fingerprint is not None
        if base is not None:
            if hasattr(base, "__len__") and len(base) != self._n:
                raise DifficultyFileError(f"{self.path}: holds {self._n} samples but the base dataset has "
                                          f"{len(base)}; the file belongs to another data set")
            if _is_hf_dataset(base):
                self._check_hf(base, id_column)
                checked = True
            else:
                if id_column is not None:
                    raise ValueError("id_column applies to a Hugging Face datasets.Dataset base only, got "
                                     f"{type(base).__name__}")
                ids = _cheap_ids(base)
                if ids is not None:
                    self._compare_ids(ids, "base dataset")
                    checked = True
                elif hasattr(base, "__getitem__") and self._n:
                    with contextlib.suppress(Exception):  # a probe only; __getitem__ raises its own errors later
                        self._check_items = _item_id(base[0]) is not None
                    if self._check_items:
                        self._check_item(0, base[0])
                        checked = True
                if fingerprint is None:
                    fp = getattr(base, "fingerprint", None)
                    if callable(fp):
                        fp = fp()
                    if fp is None and getattr(base, "samples", None) is not None:
                        samples = list(base.samples)
                        if samples and all(hasattr(s, "persona") and hasattr(s, "context") for s in samples):
                            from .data import data_fingerprint
                            fp = data_fingerprint(samples)
                    if fp is not None and not isinstance(fp, str):
                        raise TypeError(f"base dataset fingerprint must be a str, got {type(fp).__name__}")
                    fingerprint = fp
                    checked = checked or fp is not None
            if not checked:
                logger.warning("%s: the base dataset (%s) carries no sample ids and no fingerprint, so its order "
                               "cannot be checked against the file; item i is assumed to be the file's sample i",
                               self.path, type(base).__name__)
        if fingerprint is not None and fingerprint != file_fp:
            raise DifficultyFileError(f"{self.path}: data fingerprint {file_fp!r} does not match the data set's "
                                      f"{fingerprint!r}; the file was computed on other data (or another order)")

    def _check_hf(self, ds: Any, id_column: str | None) -> None:
        inputs = self._prov.get("inputs") if isinstance(self._prov.get("inputs"), dict) else {}
        col = id_column
        if col is None and isinstance(inputs.get("id_column"), str) and inputs["id_column"] in ds.column_names:
            col = inputs["id_column"]
        if col is None and "sample_id" in ds.column_names:
            col = "sample_id"
        if col is not None:
            if col not in ds.column_names:
                raise DifficultyFileError(f"{self.path}: id_column {col!r} is not a column of the base dataset; "
                                          f"it has {ds.column_names}")
            ids = ["" if v is None else str(v) for v in ds[col]]
            self._compare_ids(ids, f"datasets.Dataset (column {col!r})")
            return
        recorded = inputs.get("rows_fingerprint")
        if isinstance(recorded, str):
            cols = inputs.get("rows_fingerprint_columns")
            try:
                got = rows_fingerprint(ds, cols if isinstance(cols, list) else None)
            except KeyError as e:
                raise DifficultyFileError(f"{self.path}: the base dataset lacks a column the file was computed "
                                          f"from: {e.args[0]}") from None
            if got != recorded:
                raise DifficultyFileError(f"{self.path}: the rows of the base datasets.Dataset differ from the rows "
                                          "this file scores (fingerprint mismatch: shuffled, filtered, another split "
                                          "or edited); use the dataset the file was computed on, in its order")
            return
        if rows_fingerprint(ds) == self.metadata.get("fingerprint"):
            return
        raise DifficultyFileError(f"{self.path}: cannot check that the base datasets.Dataset holds the rows this file "
                                  "scores, in order: it has no 'sample_id' column and the file records no row "
                                  "fingerprint; pass id_column=<column with the file's sample ids>")

    def _check_item(self, i: int, item: Any) -> None:
        sid = _item_id(item)
        if sid != self.sample_ids[i]:
            raise self._mismatch(i, sid, "base dataset")

    # -- lazy tensors
    def _get(self, name: str) -> torch.Tensor:
        if name not in self._arrays:
            if self._verify_reads and name not in self._verified:
                _verify_tensor(self._path, self._header, self._data_start, name)
                self._verified.add(name)
            self._arrays[name] = _memmap(self._path, self._header, self._data_start, name)
        return torch.from_numpy(self._arrays[name])

    def verify(self) -> MetaTokenDifficultyDataset:
        """Check the whole file now: header, every tensor's checksum, ids, and that every score,
        percentile and stage follows from the stored differences and the recorded settings.

        Returns:
            MetaTokenDifficultyDataset: ``self`` (so ``MetaTokenDifficultyDataset(p).verify()`` chains).

        Raises:
            DifficultyFileError: naming the tensor, field or sample that does not match.

        Example:
            >>> MetaTokenDifficultyDataset("difficulty.safetensors").verify()  # doctest: +SKIP
        """
        header, start = read_safetensors_header(self._path)
        if hashlib.sha256(_json(header).encode("ascii")).hexdigest() != self._header_digest:
            raise DifficultyFileError(f"{self.path}: the file changed after it was opened; open it again")
        if _CHECKSUMS not in (header.get("__metadata__") or {}):
            raise DifficultyFileError(f"{self.path}: records no checksums, so its integrity cannot be verified")
        for name in sorted(k for k in header if k != "__metadata__"):
            _verify_tensor(self._path, header, start, name)
            self._verified.add(name)
        self._ids = None
        _ = self.sample_ids
        self._verify_semantics()
        return self

    def _verify_semantics(self) -> None:
        p = self._prov
        try:
            k, tau = int(p["top_k"]), float(p["tau"])
            primary = str(p["primary_score_name"])
            stage_pct = [float(x) for x in p["stage_percentiles"]]
            normalization = p.get("normalization")
        except (KeyError, TypeError, ValueError) as e:
            raise DifficultyFileError(f"{self.path}: provenance lacks a scoring setting ({e})") from None

        def close(name: str, got: torch.Tensor, exp: torch.Tensor) -> None:
            bad = ~torch.isclose(got, exp, rtol=1e-9, atol=1e-12)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise DifficultyFileError(f"{self.path}: {name} of sample {i} ({self.sample_ids[i]!r}) is "
                                          f"{got.reshape(len(got), -1)[i].tolist()}, but the stored differences and "
                                          f"settings give {exp.reshape(len(exp), -1)[i].tolist()}")

        if normalization in ("rank", "zscore", "robust", "none"):
            close("layer_diffs", self.layer_diffs, normalize_layers(self.raw_layer_diffs.clone(), normalization))
        if k > self._l:
            raise DifficultyFileError(f"{self.path}: provenance top_k={k} exceeds the file's {self._l} layers")
        expected = score_all(self.layer_diffs.clone(), k=k, tau=tau)
        for name in self._score_keys:
            if name in expected:
                close(f"scores.{name}", self.scores(name), expected[name])
        if primary not in expected:
            raise DifficultyFileError(f"{self.path}: provenance primary score {primary!r} is not one of {sorted(expected)}")
        close("difficulty", self.difficulty, expected[primary])
        pct = percentiles(expected[primary])
        close("percentile", self.percentile, pct)
        st = assign_stages(pct, stage_pct)
        bad = self.stage != st
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise DifficultyFileError(f"{self.path}: stage of sample {i} ({self.sample_ids[i]!r}) is "
                                      f"{int(self.stage[i])}, its percentile gives stage {int(st[i])}")

    @property
    def path(self) -> Path:
        """The difficulty file's path (what a pickled copy re-opens)."""
        return self._path

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
        """L, the number of compared (edge) layers."""
        return self._l

    @property
    def top_k(self) -> int:
        """K of the ``top{K}_mean`` score."""
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
        """``[N]`` fraction of samples whose primary score is <= the sample's own."""
        return self._get("percentile")

    @property
    def stage(self) -> torch.Tensor:
        """``[N]`` int64 stages, 1-based."""
        return self._get("stage")

    @property
    def sample_ids(self) -> list[str]:
        """The N sample ids (decoded on first access; unique, non-empty)."""
        if self._ids is None:
            blob = self._get("sample_ids.utf8").numpy().tobytes()
            off = self._get("sample_ids.offsets").tolist()
            if off[0] != 0 or off[-1] != len(blob) or any(b <= a for a, b in itertools.pairwise(off)):
                raise DifficultyFileError(f"{self.path}: corrupted sample id offsets")
            ids = []
            for i, (a, b) in enumerate(itertools.pairwise(off)):
                try:
                    ids.append(blob[a:b].decode("utf-8"))
                except UnicodeDecodeError:
                    raise DifficultyFileError(f"{self.path}: sample id {i} is not valid UTF-8 (corrupted)") from None
            if len(set(ids)) != len(ids):
                seen: set[str] = set()
                dup = next(s for s in ids if s in seen or seen.add(s))
                raise DifficultyFileError(f"{self.path}: sample id {dup!r} occurs twice (corrupted file)")
            self._ids = ids
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
        if self._check_items:
            self._check_item(int(i), item)
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
            "seed": cfg.training.seed,
            # only when not the default, so that files of the prompt-only signal keep their run keys
            **({"meta_signal": mt.signal, "knn_k": mt.knn_k} if mt.signal != "meta" else {})}


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
