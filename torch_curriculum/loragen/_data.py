"""Training examples for the generator: edge token ids + response labels + the cloud text."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ._cloud import CloudStateCache
from ._config import DEFAULT_CLOUD_SYSTEM_PROMPT

__all__ = [
    "CLOUD_SOURCES",
    "LoRAGenCollator",
    "LoRAGenDataset",
    "LoRAGenExample",
    "build_examples",
    "cloud_text",
]

logger = logging.getLogger(__name__)

CLOUD_SOURCES = ("persona", "context", "persona_or_context", "persona_context")


@dataclass(frozen=True)
class LoRAGenExample:
    """One tokenized training example.

    Attributes:
        sample_id (str): the dialogue sample's id.
        input_ids (tuple[int, ...]): prompt + response (+ EOS) edge token ids.
        labels (tuple[int, ...]): same length; -100 on the prompt, the token id on the response.
        cloud_text (str): system prompt + persona text the cloud model reads.
        truncated (bool): the prompt (or response) was shortened to fit ``max_length``.
    """

    sample_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    cloud_text: str
    truncated: bool = False

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"sample {self.sample_id!r}: input_ids ({len(self.input_ids)}) and "
                             f"labels ({len(self.labels)}) differ in length")
        if not any(t != -100 for t in self.labels[1:]):
            raise ValueError(f"sample {self.sample_id!r}: no response token is labelled")


def _field(sample: Any, name: str) -> Any:
    if isinstance(sample, dict):
        return sample.get(name)
    return getattr(sample, name, None)


def cloud_text(sample: Any, *, system_prompt: str = DEFAULT_CLOUD_SYSTEM_PROMPT,
               source: str = "persona_or_context", max_context_turns: int = 4) -> str:
    """The text the cloud model reads for a sample: system prompt + persona (or context).

    Args:
        sample: a ``DialogueSample`` (or dict) with ``persona`` and ``context`` tuples of str.
        system_prompt (str): put first. Default: the seed's prompt.
        source (str): ``persona``; ``context``; ``persona_or_context`` (persona, or the dialogue
            context when the sample has no persona, e.g. chitchat; the default);
            ``persona_context`` (both).
        max_context_turns (int): the last this many context turns are used. Default 4.

    Raises:
        ValueError: unknown source or ``max_context_turns < 1``.

    Example:
        >>> cloud_text({"persona": ("i like cats.",), "context": ("hi",)})
        'Analyze the dialogue context and generate task embeddings.\\nPersona:\\ni like cats.'
    """
    if source not in CLOUD_SOURCES:
        raise ValueError(f"cloud source must be one of {CLOUD_SOURCES}, got {source!r}")
    if isinstance(max_context_turns, bool) or not isinstance(max_context_turns, int) \
            or max_context_turns < 1:
        raise ValueError(f"max_context_turns must be an int >= 1, got {max_context_turns!r}")
    persona = tuple(_field(sample, "persona") or ())
    context = tuple(_field(sample, "context") or ())[-max_context_turns:]
    parts = [system_prompt]
    use_persona = source in ("persona", "persona_context") or (
        source == "persona_or_context" and persona)
    use_context = source in ("context", "persona_context") or (
        source == "persona_or_context" and not persona)
    if use_persona and persona:
        parts.append("Persona:\n" + "\n".join(persona))
    if use_context and context:
        parts.append("Dialogue:\n" + "\n".join(context))
    return "\n".join(parts)


def _edge_prompt(sample: Any, include_persona: bool, max_context_turns: int) -> str:
    """The edge prompt: ``data.format_prompt``'s persona + dialogue layout, no system prompt, then
    ``You:`` so the response follows as the responder's turn."""
    from torch_curriculum.data import DialogueSample, format_prompt

    persona = tuple(_field(sample, "persona") or ()) if include_persona else ()
    context = tuple(_field(sample, "context") or ())
    if not persona and not context:  # the responder opens the dialogue
        return "Dialogue:\nYou:"
    ds = DialogueSample(str(_field(sample, "sample_id")), persona, context,
                        str(_field(sample, "response")))
    return format_prompt(ds, system_prompt="", max_context_turns=max_context_turns).text + "\nYou:"


def build_examples(samples: Sequence[Any], edge_tokenizer, *, max_length: int = 256,
                   system_prompt: str = DEFAULT_CLOUD_SYSTEM_PROMPT,
                   cloud_source: str = "persona_or_context", include_persona: bool = True,
                   prompt_fn: Callable[[Any], str] | None = None, add_eos: bool = True,
                   truncation: str = "left", max_context_turns: int = 4) -> list[LoRAGenExample]:
    """Tokenize dialogue samples for the generator.

    The edge input is ``prompt + " " + response (+ EOS)`` where the prompt is
    ``torch_curriculum.data.format_prompt``'s persona + last ``max_context_turns`` turns layout
    (without the system prompt, which only the cloud reads) followed by ``You:``, prompt and response tokenized
    separately (special tokens only on the prompt) so the label boundary is exact; labels are
    -100 on the prompt. The cloud text is :func:`cloud_text`.

    Args:
        samples (Sequence): ``DialogueSample`` objects (or dicts) with ``sample_id``,
            ``persona``, ``context``, ``response``.
        edge_tokenizer: the edge model's tokenizer.
        max_length (int): token limit per example. Default 256.
        system_prompt (str): cloud system prompt. Default: the seed's.
        cloud_source (str): see :func:`cloud_text`. Default ``persona_or_context``.
        include_persona (bool): put the persona into the edge prompt too (True, the default);
            False gives LoRA-Gen's setting where only the generated LoRA carries it.
        prompt_fn (Callable | None): sample -> prompt text; None uses the layout above.
        add_eos (bool): append the tokenizer's EOS to the response (labelled). Default True.
        truncation (str): ``left`` (default) drops the oldest prompt tokens (keeping the first,
            BOS-like token) and, if the response alone is too long, its tail; such examples get
            ``truncated=True`` and are counted in a warning. ``error`` raises instead.
        max_context_turns (int): context turns kept by the default prompt and the cloud text.
            Default 4.

    Returns:
        list[LoRAGenExample]

    Raises:
        ValueError: empty response, unknown option, or (``truncation="error"``) an example over
            ``max_length``; the message names the sample.
    """
    if truncation not in ("left", "error"):
        raise ValueError(f"truncation must be 'left' or 'error', got {truncation!r}")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    fmt = prompt_fn if prompt_fn is not None else (
        lambda s: _edge_prompt(s, include_persona, max_context_turns))
    eos = getattr(edge_tokenizer, "eos_token_id", None) if add_eos else None
    out, n_trunc = [], 0
    for j, sample in enumerate(samples):
        sid = str(_field(sample, "sample_id") if _field(sample, "sample_id") is not None else j)
        response = _field(sample, "response")
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"sample {sid!r}: response must be a non-empty str, got {response!r}")
        prompt = fmt(sample)
        p_ids = list(edge_tokenizer(prompt, add_special_tokens=True)["input_ids"])
        r_ids = list(edge_tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"])
        if eos is not None:
            r_ids.append(int(eos))
        truncated = False
        if len(p_ids) + len(r_ids) > max_length:
            if truncation == "error":
                raise ValueError(f"sample {sid!r}: {len(p_ids) + len(r_ids)} tokens > "
                                 f"max_length={max_length}")
            truncated = True
            keep_prompt = max(min(len(p_ids), 8), max_length - len(r_ids))
            r_ids = r_ids[: max_length - keep_prompt]
            p_ids = p_ids[:1] + p_ids[len(p_ids) - (keep_prompt - 1):]
            n_trunc += 1
        out.append(LoRAGenExample(
            sample_id=sid, input_ids=tuple(p_ids + r_ids),
            labels=tuple([-100] * len(p_ids) + r_ids),
            cloud_text=cloud_text(sample, system_prompt=system_prompt, source=cloud_source,
                                  max_context_turns=max_context_turns),
            truncated=truncated))
    if n_trunc:
        logger.warning("build_examples: %d of %d examples were truncated to max_length=%d "
                       "(LoRAGenExample.truncated marks them)", n_trunc, len(out), max_length)
    return out


class LoRAGenDataset(Dataset):
    """A map-style dataset over :class:`LoRAGenExample`; items carry their index.

    Attributes:
        lengths (list[int]): token count per example (for length bucketing).
    """

    def __init__(self, examples: Sequence[LoRAGenExample]):
        if not examples:
            raise ValueError("LoRAGenDataset needs at least one example")
        self.examples = list(examples)
        self.lengths = [len(e.input_ids) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": int(index), "example": self.examples[index]}


class LoRAGenCollator:
    """Pads a list of dataset items into one generator batch.

    Args:
        cloud_cache (CloudStateCache): gives each example's cloud states.
        pad_token_id (int): edge padding id (the padded positions are masked out anyway).
        padding_side (str): ``right`` (default) or ``left``; the generator is correct under both.

    Returns (on call):
        dict: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]``; ``cloud_states``
        ``[B, T_c, d_c]``; ``cloud_mask`` ``[B, T_c]``; ``indices`` ``[B]`` (dataset indices);
        ``sample_ids`` list[str].
    """

    def __init__(self, cloud_cache: CloudStateCache, pad_token_id: int = 0, *,
                 padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.cloud_cache = cloud_cache
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        exs = [it["example"] for it in items]
        t_max = max(len(e.input_ids) for e in exs)
        bsz = len(exs)
        input_ids = torch.full((bsz, t_max), self.pad_token_id, dtype=torch.long)
        labels = torch.full((bsz, t_max), -100, dtype=torch.long)
        mask = torch.zeros(bsz, t_max, dtype=torch.long)
        for row, e in enumerate(exs):
            n = len(e.input_ids)
            sl = slice(0, n) if self.padding_side == "right" else slice(t_max - n, t_max)
            input_ids[row, sl] = torch.tensor(e.input_ids)
            labels[row, sl] = torch.tensor(e.labels)
            mask[row, sl] = 1
        states, cmask = self.cloud_cache.batch([e.cloud_text for e in exs])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
                "cloud_states": states, "cloud_mask": cmask,
                "indices": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
                "sample_ids": [e.sample_id for e in exs]}
