"""Small real parts for the HF Trainer tests: a tiny random llama, token data, a difficulty table,
and a run helper that records which samples every optimiser step trained on."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, TrainingArguments

VOCAB = 64
N_SAMPLES = 40
N_LAYERS = 4


def tiny_llama(seed: int = 0, layers: int = N_LAYERS) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg)


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences; each item carries its index so a test can see what was trained on."""

    def __init__(self, n: int = N_SAMPLES, seq: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, VOCAB, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def difficulty_table(n: int = N_SAMPLES, layers: int = N_LAYERS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, layers, generator=g, dtype=torch.float64)


def training_args(out_dir, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out_dir), per_device_train_batch_size=4, learning_rate=1e-2,
                logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                dataloader_num_workers=0, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


class BatchRecorder(TrainerCallback):
    """Remembers, per optimiser step, the token rows of the batches it trained on (via the model's
    forward pre-hook), so two runs can be compared batch by batch."""

    def __init__(self, model, dataset: TokenDataset):
        self.rows: dict[int, list[int]] = {}
        self.global_step = 0
        lookup = {tuple(r.tolist()): i for i, r in enumerate(dataset.ids)}

        def hook(_module, _args, kwargs):
            ids = kwargs.get("input_ids")
            if ids is not None:
                self.rows.setdefault(self.global_step + 1, []).extend(
                    lookup[tuple(r.tolist())] for r in ids)

        self.handle = model.register_forward_pre_hook(hook, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.global_step = state.global_step
