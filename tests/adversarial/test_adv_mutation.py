"""Property tests (issue 14): random byte mutations of a difficulty file and of a label file +
header give a clear error of the library's own type, or a result identical to the unmutated file;
never a different result without an error.

Bounded: ``MUTATION_EXAMPLES`` examples per test (400, about 10 ms each; the module runs in ~30 s),
derandomized so CI sees the same cases every run. For a longer random search set
``TC_MUTATION_EXAMPLES=5000 TC_MUTATION_RANDOM=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from _adv import everything, same, small_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_curriculum.dataset import DifficultyFileError, MetaTokenDifficultyDataset
from torch_curriculum.labels import LabelFileError, header_path, read_labels, write_labels

MUTATION_EXAMPLES = int(os.environ.get("TC_MUTATION_EXAMPLES", "400"))
_SETTINGS = settings(max_examples=MUTATION_EXAMPLES, deadline=None,
                     derandomize=not os.environ.get("TC_MUTATION_RANDOM"),
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("mut")
    ds = small_file(root / "ref.safetensors", n=12, layers=5, ids=[f"id\u2028{i}" for i in range(12)],
                    models={"cloud": "c", "edge": "e"})
    return (root / "ref.safetensors").read_bytes(), everything(ds), root


def _mutations(size: int):
    """1-3 edits: overwrite a byte, flip a bit, or (rarely) truncate / append."""
    edit = st.one_of(
        st.tuples(st.just("set"), st.integers(0, size - 1), st.integers(0, 255)),
        st.tuples(st.just("flip"), st.integers(0, size - 1), st.integers(0, 7)),
        st.tuples(st.just("cut"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("append"), st.integers(1, 16), st.integers(0, 255)),
    )
    return st.lists(edit, min_size=1, max_size=3)


def _apply(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, val in edits:
        if kind == "set" and pos < len(b):
            b[pos] = val
        elif kind == "flip" and pos < len(b):
            b[pos] ^= 1 << val
        elif kind == "cut":
            del b[pos:]
        elif kind == "append":
            b += bytes([val]) * pos
    return bytes(b)


def _header_span(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


@pytest.mark.parametrize("region", ["anywhere", "header", "data"])
def test_mutated_difficulty_file_errors_or_reads_identically(reference, region):
    data, ref, root = reference
    hs = _header_span(data)
    lo, hi = {"anywhere": (0, len(data)), "header": (0, hs), "data": (hs, len(data))}[region]
    seen = {"error": 0, "identical": 0}

    @_SETTINGS
    @given(edits=_mutations(hi - lo))
    def check(edits):
        edits = [(k, p + lo if k in ("set", "flip", "cut") else p, v) for k, p, v in edits]
        mutated = _apply(data, edits)
        p = root / "m.safetensors"
        p.write_bytes(mutated)
        try:
            got = everything(MetaTokenDifficultyDataset(p))
        except DifficultyFileError as e:
            assert str(p) in str(e)
            seen["error"] += 1
            return
        assert same(got, ref), f"different result without an error after {edits}"
        seen["identical"] += 1

    check()
    assert seen["error"] > 0


@pytest.fixture(scope="module")
def label_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    g = torch.Generator().manual_seed(0)
    p = write_labels(root / "ref.jsonl", [f"s{i}\x85" for i in range(6)], torch.rand(6, 4, generator=g,
                     dtype=torch.float64), metadata={"cloud": "c", "top_k": 3})
    return p.read_bytes(), header_path(p).read_bytes(), read_labels(p), root


@pytest.mark.parametrize("target", ["labels", "header"])
def test_mutated_label_file_or_header_errors_or_reads_identically(label_reference, target):
    labels, header, ref, root = label_reference
    size = len(labels) if target == "labels" else len(header)
    seen = {"error": 0, "identical": 0}

    @_SETTINGS
    @given(edits=_mutations(size))
    def check(edits):
        p = root / "m.jsonl"
        p.write_bytes(_apply(labels, edits) if target == "labels" else labels)
        header_path(p).write_bytes(_apply(header, edits) if target == "header" else header)
        try:
            got = read_labels(p)
        except LabelFileError as e:
            assert p.name in str(e)
            seen["error"] += 1
            return
        assert got == ref, f"different result without an error after {edits}"
        seen["identical"] += 1

    check()
    assert seen["error"] > 0


def test_mutations_are_not_vacuous(label_reference):
    """The header checksums are what make header mutations safe: forging one field's value with a
    matching digest is read back, which shows the check is on the digest, not on a copy."""
    labels, header, _, root = label_reference
    h = json.loads(header)
    h["metadata"]["cloud"] = "forged"
    h["checksums"]["metadata"] = hashlib.sha256(json.dumps(h["metadata"], sort_keys=True, separators=(",", ":"))
                                                .encode()).hexdigest()
    p = root / "forged.jsonl"
    p.write_bytes(labels)
    header_path(p).write_text(json.dumps(h))
    assert read_labels(p)[1]["metadata"]["cloud"] == "forged" and Path(p).exists()
