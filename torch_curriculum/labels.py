"""Difficulty label files in the seed's schema (JSON array or JSONL) with a provenance header.

One object per sample::

    {"sample_id": "personachat_train_00001",
     "meta_token_diff": {"layer_0": 0.23, ..., "layer_31": 0.89},
     "difficulty_scores": {"mean": 0.45, "max": 0.89, "top3_mean": 0.76, "weighted_mean": 0.52},
     "difficulty_percentile": 0.67,
     "curriculum_stage": 2}

``meta_token_diff`` holds the *normalised* per-layer differences; every score, the percentile and
the stage are computed from them, so a reader can check the file (and :func:`read_labels` does).
The label file itself stays pure seed schema (any JSON tool reads it); provenance (library version,
K, tau, stage percentiles, primary score, models, metric, ... whatever the caller passes) goes into a
sidecar header ``<file>.header.json`` that also records the label file's sha256, so a header can
never silently describe another file, and a sha256 of each of its own fields (``checksums``), so
an edited header field is named. The header is written first (each file atomically), so no
kill point leaves a label file without its header; a label file that has none (written by another
tool) is read with a logged warning that its percentiles and stages cannot be verified.
JSONL records end at ``\n`` only; U+2028, U+2029 and U+0085 in ids are written escaped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write
from ._version import __version__
from .difficulty import (
    AGGREGATES,
    aggregate,
    assign_stages,
    default_tau,
    percentiles,
    score_all,
    score_name,
)

__all__ = ["LABEL_SCHEMA_VERSION", "LabelFileError", "header_path", "read_labels", "write_labels"]

LABEL_SCHEMA_VERSION = 2  # 2: the header carries per-field checksums
_HEADER_FIELDS = ("schema", "schema_version", "library_version", "format", "num_samples", "num_layers", "top_k",
                  "tau", "stage_percentiles", "primary_score", "sha256", "metadata")
logger = logging.getLogger(__name__)
_LAYER_KEY = re.compile(r"^layer_(\d+)$")
_TOPK_KEY = re.compile(r"^top(\d+)_mean$")
_RECORD_KEYS = ("sample_id", "meta_token_diff", "difficulty_scores", "difficulty_percentile", "curriculum_stage")
# Written floats round-trip exactly (repr); the tolerance only absorbs summation order and
# files written by other tools with float32 precision.
_RTOL, _ATOL = 1e-6, 1e-6
_LINE_SEPARATORS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


class LabelFileError(ValueError):
    """A label file is malformed or inconsistent; the message names the file and the sample."""


def header_path(path: str | Path) -> Path:
    """Sidecar header of a label file: ``labels.jsonl`` -> ``labels.jsonl.header.json``."""
    path = Path(path)
    return path.with_name(path.name + ".header.json")


def _fmt(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "json"
    raise ValueError(f"label file {path}: expected a .json (array) or .jsonl name, got suffix {suffix!r}")


def write_labels(
    path: str | Path,
    sample_ids: Sequence[str],
    layer_diffs: torch.Tensor,
    *,
    top_k: int = 3,
    tau: float | None = None,
    stage_percentiles: Sequence[float] = (0.33, 0.66, 1.0),
    primary: str = "topk_mean",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a seed-schema label file (and its provenance header) from normalised differences.

    Scores (``mean``, ``max``, ``top{K}_mean``, ``weighted_mean``), percentile (of the ``primary``
    score) and stage are computed here from ``layer_diffs`` with :mod:`torch_curriculum.difficulty`.

    Args:
        path (str | Path): ``*.jsonl`` (one object a line) or ``*.json`` (one array).
        sample_ids (Sequence[str]): N unique sample ids, in the order of ``layer_diffs``.
        layer_diffs (torch.Tensor): ``[N, L]`` normalised per-layer differences.
        top_k (int): K of ``top{K}_mean``. Defaults to 3.
        tau (float | None): tau of ``weighted_mean``; None means L/3. Defaults to None.
        stage_percentiles (Sequence[float]): stage upper bounds. Defaults to ``(0.33, 0.66, 1.0)``.
        primary (str): aggregate behind percentile and stage. Defaults to ``"topk_mean"``.
        metadata (dict | None): provenance stored in the header (JSON-serialisable).
        overwrite (bool): replace an existing file. Defaults to False (an existing file is an error).

    Returns:
        Path: the label file written (the header is ``header_path(path)``).

    Raises:
        ValueError: bad suffix, N mismatch, duplicate or non-string ids, NaN/Inf, bad K/tau/stages.
        FileExistsError: the file exists and ``overwrite`` is False.

    Example:
        >>> write_labels("labels.jsonl", ["a", "b"], torch.rand(2, 4))  # doctest: +SKIP
    """
    path = Path(path)
    fmt = _fmt(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"label file {path} exists; pass overwrite=True to replace it")
    d = torch.as_tensor(layer_diffs).to(torch.float64)
    ids = list(sample_ids)
    if d.dim() != 2 or d.shape[0] != len(ids):
        raise ValueError(f"layer_diffs must be [N, L] with N={len(ids)} sample ids, got {tuple(d.shape)}")
    bad = [i for i in ids if not isinstance(i, str) or not i]
    if bad:
        raise ValueError(f"sample ids must be non-empty strings, got {bad[0]!r}")
    for i, sid in enumerate(ids):
        if not sid.isascii():
            try:
                sid.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"sample id at index {i} ({sid!r}) is not valid Unicode (a lone surrogate) "
                                 "and cannot be written as UTF-8") from None
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"duplicate sample id {dup!r}")
    nonfinite = (~torch.isfinite(d)).any(dim=1)
    if bool(nonfinite.any()):
        named = [ids[i] for i in nonfinite.nonzero()[:, 0].tolist()[:5]]
        raise ValueError(f"NaN/Inf differences for sample(s) {named} ({int(nonfinite.sum())} in all)")
    if primary not in AGGREGATES:
        raise ValueError(f"unknown primary score {primary!r}; expected one of {', '.join(AGGREGATES)}")
    n_layers = d.shape[1]
    tau_used = default_tau(n_layers) if tau is None else float(tau)
    scores = score_all(d, k=top_k, tau=tau_used)
    primary_scores = scores[score_name(primary, top_k)]
    pct = percentiles(primary_scores)
    stages = assign_stages(pct, stage_percentiles)

    d_list, pct_list, stage_list = d.tolist(), pct.tolist(), stages.tolist()
    score_lists = {k: v.tolist() for k, v in scores.items()}
    records = [
        {
            "sample_id": sid,
            "meta_token_diff": {f"layer_{j}": d_list[i][j] for j in range(n_layers)},
            "difficulty_scores": {k: score_lists[k][i] for k in ("mean", "max", score_name("topk_mean", top_k), "weighted_mean")},
            "difficulty_percentile": pct_list[i],
            "curriculum_stage": stage_list[i],
        }
        for i, sid in enumerate(ids)
    ]
    if fmt == "jsonl":
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        body = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    # JSON allows U+2028/U+2029/U+0085 raw inside strings, but line readers (str.splitlines, many
    # JSONL tools) split on them; escaped they round-trip everywhere. They only occur inside strings.
    body = body.translate(_LINE_SEPARATORS)
    data = body.encode("utf-8")
    header = {
        "schema": "torch_curriculum.labels",
        "schema_version": LABEL_SCHEMA_VERSION,
        "library_version": __version__,
        "format": fmt,
        "num_samples": len(ids),
        "num_layers": n_layers,
        "top_k": top_k,
        "tau": tau_used,
        "stage_percentiles": [float(x) for x in stage_percentiles],
        "primary_score": primary,
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": metadata or {},
    }
    header["checksums"] = {k: _field_digest(v) for k, v in header.items()}
    header_bytes = (json.dumps(header, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Header first: it records the sha256 of the label file about to be written, so whatever the kill
    # point, a reader finds either no label file, a header that does not match (refused, the file is
    # named), or both complete. Labels first would leave, after a kill in between, a label file with
    # no header, whose stages and percentiles nothing can check.
    with atomic_write(header_path(path)) as f:
        f.write(header_bytes)
    with atomic_write(path) as f:
        f.write(data)
    return path


def _field_digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_header(hpath: Path, header: dict[str, Any]) -> None:
    """The header's own integrity: known fields only, each matching its recorded checksum."""
    unknown = sorted(set(header) - {*_HEADER_FIELDS, "checksums"})
    if unknown:
        raise LabelFileError(f"{hpath}: unknown header field(s) {unknown} (corrupted or edited header)")
    sums = header.get("checksums")
    if sums is None:
        if header.get("schema_version", 1) == 1:  # written before headers carried checksums
            logger.warning("%s: header from an older torch_curriculum, without checksums; its fields are "
                           "not verified", hpath)
            return
        raise LabelFileError(f"{hpath}: header lacks its 'checksums' field (corrupted or edited header)")
    if not isinstance(sums, dict) or set(sums) != set(header) - {"checksums"}:
        missing = sorted((set(header) - {"checksums"}) ^ set(sums if isinstance(sums, dict) else {}))
        raise LabelFileError(f"{hpath}: header field(s) {missing} do not match the recorded checksums "
                             "(corrupted or edited header)")
    for k in sorted(sums):
        if _field_digest(header[k]) != sums[k]:
            raise LabelFileError(f"{hpath}: header field {k!r} does not match its checksum (value "
                                 f"{json.dumps(header[k])[:80]}); the header was edited or corrupted")


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text of a label or header file (a leading BOM dropped); errors name line and byte offset."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise LabelFileError(f"{path}, line {line}: not UTF-8 text (byte offset {e.start}: "
                             f"{raw[e.start:e.start + 1]!r})") from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _parse(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _load_records(path: Path, fmt: str, raw: bytes) -> list[tuple[str, Any]]:
    """Parse the file into (location, object) pairs; location names a line or an array index."""
    text = _decode(path, raw)
    if fmt == "jsonl":
        out = []
        # JSON Lines ends records at "\n" only: str.splitlines() would also split inside an id holding
        # U+2028, U+0085, \x1c ... (written raw by other tools; valid JSON string characters)
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                out.append((f"line {lineno}", _parse(line.removesuffix("\r"))))
            except _DuplicateKey as e:
                raise LabelFileError(f"{path}, line {lineno}: key {e.args[0]!r} occurs twice in one object") from None
            except json.JSONDecodeError as e:
                raise LabelFileError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        return out
    try:
        data = _parse(text)
    except _DuplicateKey as e:
        raise LabelFileError(f"{path}: key {e.args[0]!r} occurs twice in one object") from None
    except json.JSONDecodeError as e:
        raise LabelFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise LabelFileError(f"{path}: expected a JSON array of label objects, got {type(data).__name__}")
    return [(f"item {i}", r) for i, r in enumerate(data)]


def _layer_count(r: Any) -> int | None:
    diff = r.get("meta_token_diff") if isinstance(r, dict) else None
    return len(diff) if isinstance(diff, dict) and diff else None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_labels(path: str | Path, *, verify: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a seed-schema label file and its provenance header, checking every record.

    Checks: each record has the five seed keys with the right types; every sample has the same
    layers ``layer_0..layer_{L-1}`` (none missing); ids are unique; with ``verify`` the scores are
    recomputed from ``meta_token_diff`` (``weighted_mean`` only when the header gives tau), and,
    when the header is present, percentile and stage are recomputed over the whole file and the
    header's sha256 must match the file.

    Args:
        path (str | Path): a ``.json`` or ``.jsonl`` label file.
        verify (bool): recompute and compare scores, percentiles and stages. Defaults to True.

    Returns:
        tuple[list[dict], dict]: the records (as in the file) and the header (``{}`` when the file
        has no sidecar header, e.g. one written by another tool).

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: the path is a directory.
        LabelFileError: not UTF-8 (line and byte offset named), a key twice in one object, malformed JSON, missing/extra layers, bad types, duplicate ids, scores that
            do not match ``meta_token_diff``, or a header that belongs to another file (the sample
            and the field are named).

    Example:
        >>> records, header = read_labels("labels.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    fmt = _fmt(path)
    if path.is_dir():
        raise IsADirectoryError(f"label file {path} is a directory, expected a .json/.jsonl file")
    if not path.exists():
        raise FileNotFoundError(f"label file {path} does not exist")
    raw = path.read_bytes()
    header: dict[str, Any] = {}
    hpath = header_path(path)
    if hpath.exists():
        try:
            header = _parse(_decode(hpath, hpath.read_bytes()))
        except _DuplicateKey as e:
            raise LabelFileError(f"{hpath}: header key {e.args[0]!r} occurs twice") from None
        except json.JSONDecodeError as e:
            raise LabelFileError(f"{hpath}: header is not valid JSON ({e.msg})") from None
        if not isinstance(header, dict):
            raise LabelFileError(f"{hpath}: header must be a JSON object, got {type(header).__name__}")
        _check_header(hpath, header)
        digest = hashlib.sha256(raw).hexdigest()
        if header.get("sha256") != digest:
            raise LabelFileError(f"{hpath}: header sha256 {header.get('sha256')} does not match {path} ({digest}); "
                                 "the header belongs to another version of the file (or the file was edited, "
                                 "or a write was interrupted)")
        for key, ok in (("num_samples", lambda v: isinstance(v, int) and v >= 1),
                        ("num_layers", lambda v: isinstance(v, int) and v >= 1),
                        ("top_k", lambda v: isinstance(v, int) and v >= 1),
                        ("tau", lambda v: _is_number(v) and v > 0),
                        ("stage_percentiles", lambda v: isinstance(v, list) and v and all(_is_number(x) for x in v)),
                        ("primary_score", lambda v: v in AGGREGATES)):
            if key in header and not ok(header[key]):
                raise LabelFileError(f"{hpath}: header field {key!r} has an invalid value {header[key]!r}")
    else:
        logger.warning("%s has no header %s: its scores are checked against meta_token_diff, but its "
                       "difficulty_percentile and curriculum_stage cannot be verified", path, hpath.name)
    items = _load_records(path, fmt, raw)
    if not items:
        raise LabelFileError(f"{path}: holds no label records")
    counts = [c for c in (_layer_count(r) for _, r in items) if c is not None]
    if isinstance(header.get("num_layers"), int):
        expect_layers: int | None = header["num_layers"]
    elif counts:  # the most common count, so a record missing a layer is the one blamed
        expect_layers = max(sorted(set(counts)), key=counts.count)
    else:
        expect_layers = None

    records: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    n_layers: int | None = None
    rows: list[list[float]] = []
    topk_key: str | None = None
    for where, r in items:
        loc = f"{path}, {where}"
        if not isinstance(r, dict):
            raise LabelFileError(f"{loc}: expected a label object, got {type(r).__name__}")
        sid = r.get("sample_id")
        if not isinstance(sid, str) or not sid:
            raise LabelFileError(f"{loc}: 'sample_id' must be a non-empty string, got {sid!r}")
        loc = f"{loc} (sample {sid!r})"
        missing = [k for k in _RECORD_KEYS if k not in r]
        if missing:
            raise LabelFileError(f"{loc}: missing key(s) {missing}")
        if sid in ids:
            raise LabelFileError(f"{loc}: duplicate sample_id, first seen at {ids[sid]}")
        ids[sid] = where
        diff = r["meta_token_diff"]
        if not isinstance(diff, dict) or not diff:
            raise LabelFileError(f"{loc}: 'meta_token_diff' must be a non-empty object of layer_i -> number")
        layer_idx = {}
        for k, v in diff.items():
            m = _LAYER_KEY.match(k)
            if not m:
                raise LabelFileError(f"{loc}: 'meta_token_diff' key {k!r} is not of the form layer_<i>")
            if not _is_number(v):
                raise LabelFileError(f"{loc}: 'meta_token_diff.{k}' must be a finite number, got {v!r}")
            layer_idx[int(m.group(1))] = float(v)
        want = expect_layers if expect_layers is not None else len(layer_idx)
        expected = set(range(want))
        if set(layer_idx) != expected:
            gaps = sorted(expected - set(layer_idx))
            extra = sorted(set(layer_idx) - expected)
            basis = "the header's num_layers" if isinstance(header.get("num_layers"), int) else "most samples"
            raise LabelFileError(f"{loc}: 'meta_token_diff' must hold layer_0..layer_{want - 1} ({want} layers, as "
                                 f"{basis}); missing {[f'layer_{g}' for g in gaps]}"
                                 + (f", unexpected {[f'layer_{g}' for g in extra]}" if extra else ""))
        n_layers = want
        scores = r["difficulty_scores"]
        if not isinstance(scores, dict):
            raise LabelFileError(f"{loc}: 'difficulty_scores' must be an object")
        tk = [k for k in scores if _TOPK_KEY.match(k)]
        for k in ("mean", "max", "weighted_mean"):
            if k not in scores:
                raise LabelFileError(f"{loc}: 'difficulty_scores' lacks {k!r}")
        if len(tk) != 1:
            raise LabelFileError(f"{loc}: 'difficulty_scores' must hold exactly one top<K>_mean, got {tk}")
        if topk_key is None:
            topk_key = tk[0]
        elif tk[0] != topk_key:
            raise LabelFileError(f"{loc}: uses {tk[0]!r}, earlier samples use {topk_key!r}")
        for k, v in scores.items():
            if not _is_number(v):
                raise LabelFileError(f"{loc}: 'difficulty_scores.{k}' must be a finite number, got {v!r}")
        p = r["difficulty_percentile"]
        if not _is_number(p) or not 0 < p <= 1:
            raise LabelFileError(f"{loc}: 'difficulty_percentile' must be a number in (0, 1], got {p!r}")
        st = r["curriculum_stage"]
        if isinstance(st, bool) or not isinstance(st, int) or st < 1:
            raise LabelFileError(f"{loc}: 'curriculum_stage' must be an integer >= 1, got {st!r}")
        rows.append([layer_idx[j] for j in range(n_layers)])
        records.append(r)

    if header and header.get("num_samples") not in (None, len(records)):
        raise LabelFileError(f"{path}: header says {header['num_samples']} samples, file holds {len(records)}")
    if verify:
        _verify(path, items, records, torch.tensor(rows, dtype=torch.float64), topk_key, header)
    return records, header


def _verify(path: Path, items, records, d: torch.Tensor, topk_key: str, header: dict[str, Any]) -> None:
    k = int(_TOPK_KEY.match(topk_key).group(1))
    if k > d.shape[1]:
        raise LabelFileError(f"{path}: {topk_key} needs at least {k} layers, the file has {d.shape[1]}")
    expected = {"mean": aggregate(d, "mean"), "max": aggregate(d, "max"), topk_key: aggregate(d, "topk_mean", k=k)}
    if "tau" in header:
        expected["weighted_mean"] = aggregate(d, "weighted_mean", tau=header["tau"])
    for name, exp in expected.items():
        got = torch.tensor([r["difficulty_scores"][name] for r in records], dtype=torch.float64)
        bad = ~torch.isclose(got, exp, rtol=_RTOL, atol=_ATOL)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise LabelFileError(f"{path}, {items[i][0]} (sample {records[i]['sample_id']!r}): "
                                 f"difficulty_scores.{name}={got[i].item()!r} does not match its meta_token_diff "
                                 f"(recomputed {exp[i].item()!r})")
    if not header:
        return
    primary = header.get("primary_score", "topk_mean")
    prim_key = score_name(primary, k)
    prim = expected.get(prim_key)
    if prim is None:
        return
    pct = percentiles(prim)
    got = torch.tensor([r["difficulty_percentile"] for r in records], dtype=torch.float64)
    bad = ~torch.isclose(got, pct, rtol=_RTOL, atol=_ATOL)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise LabelFileError(f"{path}, {items[i][0]} (sample {records[i]['sample_id']!r}): difficulty_percentile="
                             f"{got[i].item()!r} does not match the {prim_key} ranking ({pct[i].item()!r})")
    stages = assign_stages(pct, header.get("stage_percentiles", (0.33, 0.66, 1.0)))
    got_st = torch.tensor([r["curriculum_stage"] for r in records])
    bad = got_st != stages
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise LabelFileError(f"{path}, {items[i][0]} (sample {records[i]['sample_id']!r}): curriculum_stage="
                             f"{int(got_st[i])} but its percentile {pct[i].item():.6g} falls in stage {int(stages[i])}")
