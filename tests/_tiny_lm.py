"""Tiny real Hugging Face models and an offline word-level tokenizer for fast tests.

The models are real ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (and ``Gemma3ForCausalLM``) with
random weights from a seeded config: different widths and depths so that the layer map and the
space alignment are exercised. The tokenizer is a ``PreTrainedTokenizerFast`` over a fixed
word-level vocabulary that adds a BOS token, so offsets (system-prompt boundaries) work.
"""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["WORDS", "make_model", "make_texts", "make_tokenizer"]

_VOCAB_TEXT = ("analyze the dialogue context and generate task embeddings . persona : user assistant i you "
         "we like love hate dogs cats music play guitar run every day morning night coffee tea read "
         "books travel to paris london work as a teacher nurse engineer my favourite colour is blue "
         "red green what do your hobbies how are today fine thanks great not really maybe yes no "
         "have two kids one brother sister live in city small town farm cook pasta pizza ? ! , "
         "hello hi there weekend movie watch swim ocean beach mountain hike friends family")
WORDS = tuple(_VOCAB_TEXT.split())


def make_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="[UNK]", pad_token="[PAD]", padding_side=padding_side)


def make_model(arch: str = "llama", hidden: int = 32, layers: int = 4, vocab: int = 160, seed: int = 0):
    """A tiny random causal LM of the given architecture (float32, eval mode)."""
    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=8))
    else:
        raise ValueError(arch)
    return model.eval()


def make_texts(n: int, seed: int = 0, system: str = "analyze the dialogue context and generate task embeddings .",
               min_words: int = 3, max_words: int = 25) -> list[tuple[str, str]]:
    """n (text, system_text) prompts of varying length (so buckets and padding are exercised)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        out.append((f"{system} persona : {body}", system))
    return out
