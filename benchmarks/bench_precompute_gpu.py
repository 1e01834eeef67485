"""Precompute throughput at the seed's scale on one GPU: LLaMA-3-8B cloud, Qwen2.5-1.5B edge, bf16.

Both models are built from their configs with random weights in bf16 directly on the GPU (no
download; throughput does not depend on the weights): LLaMA-3-8B (32 layers, 4096 wide, FFN 14336,
32 heads / 8 KV, vocab 128256) and Qwen2.5-1.5B (28 layers, 1536, FFN 8960, 12 heads / 2 KV, vocab
151936). A word-level tokenizer over synthetic words stands in for theirs (ids inside both
vocabularies). The samples are synthetic dialogues of PersonaChat-like length (4-5 persona
sentences, 3-4 context turns: ~150-250 tokens), scored by :func:`torch_curriculum.precompute.precompute`
end to end (calibration, shards, merge) in bf16.

Printed: samples/s, tokens/s (real, unpadded tokens of both models) and model FLOP utilisation
(MFU): forward FLOPs of the decoder blocks (2 x non-embedding parameters per token, plus causal
attention 2 x T^2 x d per layer and sample; the LM head never runs) over the GPU's dense bf16 peak
(H100/H200 989 TFLOP/s, A100 312; else ``--peak-tflops``). Target: MFU >= 40 %; must finish in
under 8 minutes on one H100/H200 (default N = 4096).

Without CUDA it exits with status 2 and says so; ``--tiny`` runs the same code on CPU with small
configs of the same two architectures in seconds (the test suite runs it so the code is known to work).
The last line of output is one JSON object.

Usage:
    python benchmarks/bench_precompute_gpu.py [--n 4096] [--batch-size 64]
    python benchmarks/bench_precompute_gpu.py --tiny
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5)
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY_CLOUD = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=6000, max_position_embeddings=1024)
TINY_EDGE = dict(hidden_size=32, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=6000, max_position_embeddings=1024)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
SYSTEM = "Analyze the dialogue context and generate task embeddings."


def make_tokenizer(n_words: int = 5000):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3}
    for w in [*SYSTEM.lower().replace(".", " .").split(), "persona", ":", "user", "assistant"]:
        vocab.setdefault(w, len(vocab))
    for i in range(n_words):
        vocab.setdefault(f"w{i}", len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   pad_token="[PAD]")


def make_samples(n: int, n_words: int, seed: int = 0):
    """Synthetic dialogues of PersonaChat-like length: 4-5 persona sentences, 3-4 context turns."""
    from torch_curriculum.data import DialogueSample

    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(n_words)}" for _ in range(rng.randint(lo, hi)))

    return [DialogueSample(f"synth_{i:06d}", tuple(sentence(8, 12) for _ in range(rng.randint(4, 5))),
                           tuple(sentence(12, 24) for _ in range(rng.randint(3, 4))), sentence(8, 16))
            for i in range(n)]


def build(arch: str, cfg: dict, dtype, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config = (LlamaConfig if arch == "llama" else Qwen2Config)(**cfg, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM)(config)
        finally:
            torch.set_default_dtype(default)
    return model.eval()


def forward_flops(model, tokens: int, sq_tokens: int) -> float:
    """Decoder forward FLOPs: 2 x non-embedding parameters per token + causal attention 2 T^2 d per layer."""
    cfg = model.config
    dec = model.model
    params = sum(p.numel() for n, p in dec.named_parameters() if "embed_tokens" not in n)
    return 2.0 * params * tokens + 2.0 * cfg.num_hidden_layers * cfg.hidden_size * sq_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="samples (default 4096; --tiny: 48)")
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per forward (default 64; --tiny: 8)")
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU (TFLOP/s)")
    ap.add_argument("--tiny", action="store_true", help="small configs on CPU, fp32: checks the code in seconds")
    args = ap.parse_args(argv)

    import torch

    from torch_curriculum.config import CurriculumConfig
    from torch_curriculum.extraction import MetaTokenExtractor
    from torch_curriculum.precompute import precompute

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        cloud_cfg, edge_cfg = TINY_CLOUD, TINY_EDGE
        n, bs, shard = args.n or 48, args.batch_size or 8, min(args.shard_size, 16)
    else:
        if not torch.cuda.is_available():
            sys.stderr.write("bench_precompute_gpu: no CUDA device: this benchmark builds LLaMA-3-8B + Qwen2.5-1.5B "
                             "in bf16 on a GPU (H100/H200 class); run it there, or --tiny for the CPU check\n")
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
        cloud_cfg, edge_cfg = LLAMA3_8B, QWEN25_15B
        n, bs, shard = args.n or 4096, args.batch_size or 64, args.shard_size
    t_start = time.perf_counter()
    tok = make_tokenizer()
    samples = make_samples(n, 5000)
    cloud = build("llama", cloud_cfg, dtype, device)
    edge = build("qwen2", edge_cfg, dtype, device)
    t_build = time.perf_counter() - t_start
    cfg = CurriculumConfig.from_dict({"meta_token": {"batch_size": bs, "max_length": 512, "max_context_turns": 4,
                                                     "num_anchors": 64}})
    mt = cfg.meta_token
    exs = [MetaTokenExtractor(m, tok, "mean", batch_size=bs, max_length=mt.max_length, dtype=dtype)
           for m in (cloud, edge)]
    # token counts of exactly the prompts precompute builds (same formatting)
    from torch_curriculum.data import format_prompts

    prompts = format_prompts(samples, system_prompt=mt.system_prompt, max_context_turns=mt.max_context_turns,
                             tokenizer=tok, max_length=mt.max_length)
    lens = [len(t.ids) for t in exs[0].tokenize(prompts)]
    tokens, sq = sum(lens), sum(t * t for t in lens)
    # warm-up (kernels, allocator): one batch each
    with torch.inference_mode():
        for ex in exs:
            ex.extract(prompts[:bs])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = precompute(samples, exs[0], exs[1], Path(tmp) / "d.safetensors", cfg, shard_size=shard, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        assert len(ds) == n and bool(torch.isfinite(ds.raw_layer_diffs).all())
    flops = forward_flops(cloud, tokens, sq) + forward_flops(edge, tokens, sq)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result = {
        "device": name, "dtype": str(dtype).replace("torch.", ""), "tiny": bool(args.tiny),
        "cloud": "llama" + ("-tiny" if args.tiny else "-3-8B"), "edge": "qwen2" + ("-tiny" if args.tiny else "-2.5-1.5B"),
        "n_samples": n, "batch_size": bs, "tokens_per_sample_mean": round(tokens / n, 1),
        "seconds_precompute": round(seconds, 2), "seconds_build_models": round(t_build, 1),
        "samples_per_s": round(n / seconds, 2), "tokens_per_s": round(2 * tokens / seconds, 1),
        "model_tflops_per_s": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / (peak * 1e12), 4) if peak and device.type == "cuda" else None,
        "peak_tflops_assumed": peak,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
