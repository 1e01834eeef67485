"""MetaTokenDifficultyDataset: precompute on tiny real models, resume, distributed, mmap, bad files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_lm import make_model, make_texts, make_tokenizer
from safetensors import safe_open

from torch_curriculum import __version__, read_labels
from torch_curriculum.alignment import default_layer_map, select_anchors
from torch_curriculum.config import CurriculumConfig
from torch_curriculum.dataset import (
    DifficultyFileError,
    MetaTokenDifficultyDataset,
    read_safetensors_header,
    write_safetensors,
)
from torch_curriculum.difficulty import (
    assign_stages,
    normalize_layers,
    percentiles,
    score_all,
)
from torch_curriculum.extraction import MetaTokenExtractor

HERE = Path(__file__).resolve().parent
N = 26


def _cfg(**mt):
    return CurriculumConfig.from_dict({"meta_token": {"num_anchors": 12, "batch_size": 4, **mt}})


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def pair(tok):
    """(cloud, edge): qwen2 48-wide x 6 layers, llama 32-wide x 4 layers."""
    return make_model("qwen2", 48, 6, len(tok), seed=1), make_model("llama", 32, 4, len(tok), seed=0)


@pytest.fixture(scope="module")
def texts():
    return make_texts(N, seed=11)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, pair, tok, texts):
    """One uninterrupted precompute, reused by the resume / distributed comparisons."""
    cloud, edge = pair
    path = tmp_path_factory.mktemp("ref") / "ref.safetensors"
    MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), path, _cfg(), shard_size=5,
                                          progress=False)
    return path


def test_precompute_matches_independent_reference(tmp_path, pair, tok, texts, reference_file):
    cloud, edge = pair
    ds = MetaTokenDifficultyDataset(reference_file)
    assert len(ds) == N and ds.num_layers == 4
    assert ds.layer_diffs.shape == (N, 4) and ds.raw_layer_diffs.dtype == torch.float64
    assert ds.sample_ids == [f"sample_{i:08d}" for i in range(N)]
    # reference: extract directly (other batching), numpy relative projection, l2 per mapped layer
    c = MetaTokenExtractor(cloud, tok, "mean", batch_size=7).extract(texts).double().numpy()
    e = MetaTokenExtractor(edge, tok, "mean", batch_size=3).extract(texts).double().numpy()
    lm = default_layer_map(4, 6)
    anchors = select_anchors(N, 12, seed=0).numpy()

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def rel(x, i, a):  # sample i in the space of anchors a (centred by their mean)
        mu = x[a].mean(0)
        return unit(x[i] - mu) @ unit(x[a] - mu).T

    # leave-one-out: an anchor is described by the other anchors only
    ref = np.array([[np.linalg.norm(rel(c[:, m], i, anchors[anchors != i]) - rel(e[:, j], i, anchors[anchors != i]))
                     for j, m in enumerate(lm)] for i in range(N)])
    np.testing.assert_allclose(ds.raw_layer_diffs.numpy(), ref, rtol=1e-4, atol=1e-5)
    # derived tensors follow the difficulty functions
    norm = normalize_layers(ds.raw_layer_diffs.clone(), "rank")
    torch.testing.assert_close(ds.layer_diffs, norm)
    sc = score_all(norm, k=3, tau=4 / 3)
    for k, v in sc.items():
        torch.testing.assert_close(ds.scores(k), v)
    torch.testing.assert_close(ds.scores("topk_mean"), sc["top3_mean"])
    torch.testing.assert_close(ds.difficulty, sc["top3_mean"])
    torch.testing.assert_close(ds.percentile, percentiles(sc["top3_mean"]))
    assert torch.equal(ds.stage, assign_stages(ds.percentile.clone(), (0.33, 0.66, 1.0)))
    assert set(ds.stage.tolist()) == {1, 2, 3}
    # provenance
    p = ds.provenance
    assert p["layer_map"] == lm and p["alignment"]["anchors"] == anchors.tolist()
    assert p["alignment"]["num_anchors"] == 12 and p["metric"] == "l2" and p["normalization"] == "rank"
    assert p["top_k"] == 3 and p["tau"] == pytest.approx(4 / 3) and p["library_version"] == __version__
    assert p["models"]["cloud"]["model_type"] == "qwen2" and p["models"]["edge"]["hidden_size"] == 32
    assert p["models"]["cloud"]["weights_digest"] != p["models"]["edge"]["weights_digest"]
    assert p["pooling"] == {"cloud": "mean", "edge": "mean"}
    assert p["inputs"]["system_prompt"] == CurriculumConfig().meta_token.system_prompt
    meta = ds.metadata
    assert meta["schema_version"] == "1" and meta["num_samples"] == str(N) and len(meta["fingerprint"]) == 64
    keys = re.findall(r'"([^"]+)":', meta["provenance"])
    assert "layer_map" in keys and not [k for k in keys if "time" in k.lower() or "date" in k.lower()]
    with safe_open(str(reference_file), "pt") as f:  # the official reader accepts the file
        torch.testing.assert_close(f.get_tensor("layer_diffs"), ds.layer_diffs)
        torch.testing.assert_close(f.get_tensor("alignment.anchors"), torch.from_numpy(anchors))
        assert f.get_tensor("alignment.cloud_centre").shape == (4, 48)
    ds.verify()  # checksums, ids, and every score/percentile/stage recomputed from the stored diffs
    # the work dir is gone
    assert not reference_file.with_name(reference_file.name + ".work").exists()


def test_labels_written_on_request(tmp_path, pair, tok, texts):
    cloud, edge = pair
    out = tmp_path / "d.safetensors"
    ds = MetaTokenDifficultyDataset.precompute(texts[:12], (cloud, tok), (edge, tok), out, _cfg(num_anchors=6),
                                               labels_path=tmp_path / "labels.jsonl", progress=False)
    records, header = read_labels(tmp_path / "labels.jsonl")
    assert [r["sample_id"] for r in records] == ds.sample_ids
    assert [r["curriculum_stage"] for r in records] == ds.stage.tolist()
    np.testing.assert_allclose([[r["meta_token_diff"][f"layer_{j}"] for j in range(4)] for r in records],
                               ds.layer_diffs.numpy())
    assert header["metadata"]["layer_map"] == ds.provenance["layer_map"]


def test_resume_after_exception_is_byte_identical(tmp_path, pair, tok, texts, reference_file):
    cloud, edge = pair
    out = tmp_path / "r.safetensors"
    done = []

    def crash(i):
        done.append(i)
        if len(done) == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), out, _cfg(), shard_size=5,
                                              progress=False, _after_shard=crash)
    work = tmp_path / "r.safetensors.work"
    assert sorted(p.name for p in work.glob("shard_*")) == [f"shard_{i:06d}.safetensors" for i in range(3)]
    assert not out.exists()
    # a stale temp file of a write killed midway, and a damaged shard: ignored / recomputed
    (work / ".shard_000004.safetensors.x.tmp").write_bytes(b"partial")
    (work / "shard_000001.safetensors").write_bytes((work / "shard_000001.safetensors").read_bytes()[:-7])
    redone = []
    MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), out, _cfg(), shard_size=5,
                                          progress=False, _after_shard=redone.append)
    assert redone == [1, 3, 4, 5]
    assert out.read_bytes() == reference_file.read_bytes()


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from _tiny_lm import make_model, make_texts, make_tokenizer
from torch_curriculum.config import CurriculumConfig
from torch_curriculum.dataset import MetaTokenDifficultyDataset
tok = make_tokenizer()
cloud, edge = make_model("qwen2", 48, 6, len(tok), seed=1), make_model("llama", 32, 4, len(tok), seed=0)
cfg = CurriculumConfig.from_dict({{"meta_token": {{"num_anchors": 12, "batch_size": 4}}}})
kill = lambda i: os.kill(os.getpid(), signal.SIGKILL) if i == {kill_after} else None
MetaTokenDifficultyDataset.precompute(make_texts({n}, seed=11), (cloud, tok), (edge, tok), {out!r}, cfg,
                                      shard_size=5, progress=False, _after_shard=kill)
"""


def test_resume_after_sigkill_is_byte_identical(tmp_path, reference_file):
    out = tmp_path / "k.safetensors"
    code = _KILL_SCRIPT.format(tests=str(HERE), kill_after=2, n=N, out=str(out))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(list((tmp_path / "k.safetensors.work").glob("shard_*.safetensors"))) == 3 and not out.exists()
    code = _KILL_SCRIPT.format(tests=str(HERE), kill_after=-1, n=N, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert out.read_bytes() == reference_file.read_bytes()


def _dist_worker(rank, world, init_file, out, tests_dir):
    sys.path.insert(0, tests_dir)
    import torch.distributed as dist
    from _tiny_lm import make_model, make_texts, make_tokenizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tok = make_tokenizer()
        cloud, edge = make_model("qwen2", 48, 6, len(tok), seed=1), make_model("llama", 32, 4, len(tok), seed=0)
        done = []
        ds = MetaTokenDifficultyDataset.precompute(make_texts(N, seed=11), (cloud, tok), (edge, tok), out, _cfg(),
                                                   shard_size=5, progress=False, _after_shard=done.append)
        assert done == [i for i in range(6) if i % world == rank], done
        assert len(ds) == N  # every rank gets the opened file
    finally:
        dist.destroy_process_group()
    from _dist import exit_worker

    exit_worker()  # see its docstring: torch's gloo exit race, not ours


@pytest.mark.distributed
def test_two_process_gloo_equals_single_process(tmp_path, reference_file):
    import torch.multiprocessing as mp

    out = tmp_path / "dist.safetensors"
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(out), str(HERE)), nprocs=2, join=True)
    assert out.read_bytes() == reference_file.read_bytes()


def test_existing_output_and_foreign_work_dir(tmp_path, pair, tok, texts):
    cloud, edge = pair
    out = tmp_path / "e.safetensors"
    MetaTokenDifficultyDataset.precompute(texts[:10], (cloud, tok), (edge, tok), out, _cfg(num_anchors=5),
                                          progress=False, keep_work_dir=True)
    before = out.read_bytes()
    ran = []
    ds = MetaTokenDifficultyDataset.precompute(texts[:10], (cloud, tok), (edge, tok), out, _cfg(num_anchors=5),
                                               progress=False, _after_shard=ran.append)
    assert ran == [] and len(ds) == 10 and out.read_bytes() == before  # same run: just opened
    # killed between the difficulty file and the labels: a restart only writes the labels
    labels = tmp_path / "e.jsonl"
    MetaTokenDifficultyDataset.precompute(texts[:10], (cloud, tok), (edge, tok), out, _cfg(num_anchors=5),
                                          progress=False, labels_path=labels, _after_shard=ran.append)
    assert ran == [] and [r["sample_id"] for r in read_labels(labels)[0]] == ds.sample_ids
    with pytest.raises(FileExistsError, match="label file"):
        MetaTokenDifficultyDataset.precompute(texts[:9], (cloud, tok), (edge, tok), tmp_path / "g.safetensors",
                                              _cfg(num_anchors=5), progress=False, labels_path=labels)
    with pytest.raises(FileExistsError, match="another run"):
        MetaTokenDifficultyDataset.precompute(texts[:10], (cloud, tok), (edge, tok), out, _cfg(num_anchors=4),
                                              progress=False)
    with pytest.raises(DifficultyFileError, match="shards of another run"):
        MetaTokenDifficultyDataset.precompute(texts[:9], (cloud, tok), (edge, tok), tmp_path / "f.safetensors",
                                              _cfg(num_anchors=5), progress=False,
                                              work_dir=tmp_path / "e.safetensors.work")


def test_other_alignments_and_metrics(tmp_path, pair, tok, texts):
    cloud, edge = pair
    ds = MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), tmp_path / "r.safetensors",
                                               _cfg(alignment="ridge", distance_metric="mahalanobis",
                                                    normalization="zscore", primary_score="mean"),
                                               progress=False)
    assert bool(torch.isfinite(ds.raw_layer_diffs).all()) and ds.provenance["alignment"]["folds"] == 5
    torch.testing.assert_close(ds.difficulty, ds.scores("mean"))
    with pytest.raises(ValueError, match="needs equal widths"):
        MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), tmp_path / "i.safetensors",
                                              _cfg(alignment="identity"), progress=False)
    # equal widths, different depths, explicit layer map
    deep = make_model("llama", 32, 7, len(tok), seed=5)
    ds = MetaTokenDifficultyDataset.precompute(texts, (deep, tok), (edge, tok), tmp_path / "id.safetensors",
                                               _cfg(alignment="identity", distance_metric="cosine",
                                                    layer_map=[0, 2, 4, 6]), progress=False)
    assert ds.provenance["layer_map"] == [0, 2, 4, 6]
    c = MetaTokenExtractor(deep, tok).extract(texts).double()
    e = MetaTokenExtractor(edge, tok).extract(texts).double()
    ref = 1 - torch.nn.functional.cosine_similarity(c[:, [0, 2, 4, 6]], e, dim=-1)
    torch.testing.assert_close(ds.raw_layer_diffs, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="outside the cloud's layers"):
        MetaTokenDifficultyDataset.precompute(texts, (deep, tok), (edge, tok), tmp_path / "x.safetensors",
                                              _cfg(layer_map=[0, 2, 4, 7]), progress=False)


def test_meta_pooling_and_conflicts(tmp_path, pair, tok, texts):
    cloud, edge = pair
    g = torch.Generator().manual_seed(0)
    ce = MetaTokenExtractor(cloud, tok, "meta", meta_embeddings=torch.randn(4, 48, generator=g) * 0.05)
    ee = MetaTokenExtractor(edge, tok, "meta", meta_embeddings=torch.randn(4, 32, generator=g) * 0.05)
    ds = MetaTokenDifficultyDataset.precompute(texts, ce, ee, tmp_path / "m.safetensors", _cfg(pooling="meta"),
                                               progress=False)
    assert ds.layer_diffs.shape == (N, 4) and ds.provenance["layer_map"] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="needs meta-token embeddings"):
        MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), tmp_path / "n.safetensors",
                                              _cfg(pooling="meta"), progress=False)
    with pytest.raises(ValueError, match="pools with 'meta'"):
        MetaTokenDifficultyDataset.precompute(texts, ce, ee, tmp_path / "n.safetensors", _cfg(), progress=False)
    with pytest.raises(ValueError, match="top_k=5 exceeds the 4"):
        MetaTokenDifficultyDataset.precompute(texts, (cloud, tok), (edge, tok), tmp_path / "n.safetensors",
                                              _cfg(top_k=5), progress=False)


def test_nan_meta_tokens_refused_with_sample_ids(tmp_path, pair, tok, texts):
    cloud, edge = pair
    odd = (texts[0][1] + " persona : " + "hello " * 33, texts[0][1])  # the only prompt of its length
    prompts = [*texts[:6], odd]
    n_odd = len(tok(odd[0])["input_ids"])

    def poisoned(hs, mask, info):
        out = torch.stack([h[:, -1] for h in hs], 1).clone()
        out[mask.sum(1) == n_odd] = float("nan")
        return out

    ex = MetaTokenExtractor(edge, tok, poisoned)
    with pytest.raises(ValueError, match=r"NaN/Inf for sample\(s\) \['sample_00000006'\]"):
        MetaTokenDifficultyDataset.precompute(prompts, (cloud, tok), ex, tmp_path / "nan.safetensors",
                                              _cfg(num_anchors=4), progress=False)
    raw = torch.rand(5, 4)
    raw[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN/Inf distances for sample\(s\) \['d'\]"):
        MetaTokenDifficultyDataset.from_distances(raw, list("abcde"), tmp_path / "inf.safetensors")
    assert not (tmp_path / "inf.safetensors").exists()


# ---------------------------------------------------------------------------------------- opening
@pytest.fixture()
def small_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(20, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7)
    ids = [f"s{i:02d}" for i in range(20)]
    return MetaTokenDifficultyDataset.from_distances(raw, ids, tmp_path / "small.safetensors",
                                                     metadata={"note": "test"}, fingerprint="fp-123"), raw, ids


def test_from_distances_and_wrapping(small_file):
    ds, raw, ids = small_file
    torch.testing.assert_close(ds.raw_layer_diffs, raw)
    assert ds.sample_ids == ids and ds.provenance["note"] == "test" and ds.metadata["fingerprint"] == "fp-123"
    assert ds[3]["sample_id"] == "s03" and ds[3]["stage"] == int(ds.stage[3])
    base = [f"item{i}" for i in range(20)]
    wrapped = MetaTokenDifficultyDataset(ds.path, base, fingerprint="fp-123")
    assert wrapped[5] == "item5"
    wrapped = MetaTokenDifficultyDataset(ds.path, base, return_difficulty=True)
    assert wrapped[5] == ("item5", float(ds.difficulty[5]))
    loader = torch.utils.data.DataLoader(wrapped, batch_size=4)
    items, diff = next(iter(loader))
    assert list(items) == base[:4] and torch.allclose(diff, ds.difficulty[:4])
    with pytest.raises(KeyError, match="unknown score 'median'"):
        ds.scores("median")
    with pytest.raises(FileExistsError):
        MetaTokenDifficultyDataset.from_distances(raw, ids, ds.path)


def test_mismatched_base_dataset(small_file):
    ds, _, _ = small_file
    with pytest.raises(DifficultyFileError, match="holds 20 samples but the base dataset has 19"):
        MetaTokenDifficultyDataset(ds.path, list(range(19)))
    with pytest.raises(DifficultyFileError, match="fingerprint 'fp-123' does not match"):
        MetaTokenDifficultyDataset(ds.path, fingerprint="other")

    class WithFingerprint(list):
        fingerprint = "nope"

    with pytest.raises(DifficultyFileError, match="does not match"):
        MetaTokenDifficultyDataset(ds.path, WithFingerprint(range(20)))


def test_dialogue_base_dataset_fingerprint(tmp_path):
    from torch_curriculum.data import DialogueSample, data_fingerprint

    samples = [DialogueSample(f"x_all_{i:05d}", ("i like cats.",), ("hi", f"how are you {i}?"), "fine")
               for i in range(8)]

    class Base(torch.utils.data.Dataset):
        def __init__(self, s):
            self.samples = s

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return self.samples[i].response

    path = tmp_path / "dlg.safetensors"
    MetaTokenDifficultyDataset.from_distances(torch.rand(8, 3), [s.sample_id for s in samples], path,
                                              fingerprint=data_fingerprint(samples))
    assert MetaTokenDifficultyDataset(path, Base(samples))[0] == "fine"
    reordered = samples[1:] + samples[:1]
    with pytest.raises(DifficultyFileError, match="item 0 has sample_id 'x_all_00001'"):
        MetaTokenDifficultyDataset(path, Base(reordered))
    edited = [*samples[:-1], DialogueSample(samples[-1].sample_id, ("i like dogs.",), samples[-1].context, "fine")]
    with pytest.raises(DifficultyFileError, match="fingerprint"):  # same ids, other content
        MetaTokenDifficultyDataset(path, Base(edited))


def _rewrite(src: Path, dst: Path, **meta_changes):
    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        meta = dict(f.metadata())
    meta.update(meta_changes)
    write_safetensors(dst, tensors, meta)
    return dst


def test_bad_files_fail_clearly(small_file, tmp_path):
    ds, _, _ = small_file
    data = ds.path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:-10])
    with pytest.raises(DifficultyFileError, match="truncated"):
        MetaTokenDifficultyDataset(tmp_path / "trunc.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(data[:5])
    with pytest.raises(DifficultyFileError, match="truncated"):
        MetaTokenDifficultyDataset(tmp_path / "tiny.safetensors")
    (tmp_path / "extra.safetensors").write_bytes(data + b"\0" * 8)
    with pytest.raises(DifficultyFileError, match="trailing bytes"):
        MetaTokenDifficultyDataset(tmp_path / "extra.safetensors")
    garbled = bytearray(data)
    garbled[10:30] = b"#" * 20
    (tmp_path / "garbled.safetensors").write_bytes(bytes(garbled))
    with pytest.raises(DifficultyFileError, match="corrupted header"):
        MetaTokenDifficultyDataset(tmp_path / "garbled.safetensors")
    with pytest.raises(DifficultyFileError, match="no such file"):
        MetaTokenDifficultyDataset(tmp_path / "missing.safetensors")
    with pytest.raises(DifficultyFileError, match="schema version '2'"):
        MetaTokenDifficultyDataset(_rewrite(ds.path, tmp_path / "v2.safetensors", schema_version="2"))
    with pytest.raises(DifficultyFileError, match="major version differs"):
        MetaTokenDifficultyDataset(_rewrite(ds.path, tmp_path / "lib.safetensors", library_version="7.0.0"))
    with pytest.raises(DifficultyFileError, match="not a torch_curriculum difficulty file"):
        MetaTokenDifficultyDataset(_rewrite(ds.path, tmp_path / "fmt.safetensors", format="something"))
    write_safetensors(tmp_path / "partial.safetensors", {"layer_diffs": torch.zeros(20, 6, dtype=torch.float64)},
                      dict(ds.metadata))
    with pytest.raises(DifficultyFileError, match="'difficulty' is missing|'raw_layer_diffs' is missing"):
        MetaTokenDifficultyDataset(tmp_path / "partial.safetensors")


def test_writer_is_deterministic_and_atomic(tmp_path):
    t = {"b": torch.arange(6, dtype=torch.int64), "a": np.ones((2, 3), dtype=np.float32)}
    write_safetensors(tmp_path / "x.safetensors", t, {"z": "1", "a": "2"})
    write_safetensors(tmp_path / "y.safetensors", dict(reversed(list(t.items()))), {"a": "2", "z": "1"})
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    header, start = read_safetensors_header(tmp_path / "x.safetensors")
    meta = dict(header["__metadata__"])
    sums = json.loads(meta.pop("checksums"))  # added by the writer, see tests/adversarial/test_adv_files.py
    assert start % 8 == 0 and meta == {"a": "2", "z": "1"} and sorted(sums["tensors"]) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors", "y.safetensors"]  # no temp files left
    with pytest.raises(TypeError, match="str -> str"):
        write_safetensors(tmp_path / "z.safetensors", t, {"a": 1})
    assert not (tmp_path / "z.safetensors").exists()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc for RSS")
def test_open_memory_maps_without_reading(tmp_path):
    n, L = 250_000, 32
    path = tmp_path / "big.safetensors"
    g = torch.Generator().manual_seed(0)
    MetaTokenDifficultyDataset.from_distances(torch.rand(n, L, generator=g, dtype=torch.float64),
                                              [f"id{i}" for i in range(n)], path)
    import gc

    gc.collect()
    before = _rss_mb()
    ds = MetaTokenDifficultyDataset(path)
    ld = ds.layer_diffs  # mapped, not read
    opened = _rss_mb()
    assert isinstance(ds._arrays["layer_diffs"], np.memmap)
    assert ld.shape == (n, L) and opened - before < 10, (before, opened)
    total = float(ld.sum())  # touching every page makes it resident: the measurement can see reads
    touched = _rss_mb()
    assert total > 0 and touched - opened > 0.6 * n * L * 8 / 2**20, (opened, touched)


def test_progress_bar_reports_samples_per_second(tmp_path, pair, tok, texts, capfd):
    cloud, edge = pair
    MetaTokenDifficultyDataset.precompute(texts[:8], (cloud, tok), (edge, tok), tmp_path / "p.safetensors",
                                          _cfg(num_anchors=4), shard_size=4)
    err = capfd.readouterr().err
    assert "precompute meta tokens" in err and "8/8" in err and "sample/s" in err
