"""Dialogue readers, prompt formatting and data fingerprints.

``read_dialogues(path)`` turns a dialogue file into :class:`DialogueSample` objects, one per response
turn, with stable ids ``{source}_{split}_{index:05d}`` (``index`` counts the samples of that split
from 0, in file order). Five formats are read, detected from the file name and its first line:

``parlai``
    PersonaChat / ConvAI2 ParlAI text (``train_self_original.txt``): ``1 your persona: ...`` lines, then
    ``N partner utterance<TAB>reply<TAB><TAB>cand1|cand2|...``; the number restarts at 1 for each
    episode. The reply is the response, the partner utterances and earlier replies are the context.
``personachat_json``
    ``personachat_self_original.json``: ``{"train": [{"personality": [...], "utterances":
    [{"history": [...], "candidates": [..., gold]}]}], "valid": [...]}``; the gold reply is the last
    candidate; ``split`` selects the top-level keys (all of them by default).
``synthetic_csv``
    Synthetic-Persona-Chat CSV: columns ``user 1 personas``, ``user 2 personas`` and ``Best Generated
    Conversation`` (one turn a line, ``User 1: ...`` / ``User 2: ...``). Each turn after the first is a
    response, with its speaker's persona.
``chitchat``
    The ``chitchat-dataset`` JSON (``{conversation_id: {"messages": [[{"text", "sender", ...}, ...],
    ...]}}``: messages grouped by sender, one group per turn). No personas.
``jsonl``
    One object a line: ``{"sample_id"?: str, "persona": [str] | str, "context": [str], "response": str}``.

``format_prompt(sample)`` builds the model input: system prompt, persona and the last
``max_context_turns`` turns of context (the last is the current utterance); the response is never part
of it. ``data_fingerprint(samples)`` hashes ids and texts, for provenance.

Example:
    >>> samples = read_dialogues("train_self_original.txt")  # doctest: +SKIP
    >>> samples[0].sample_id  # doctest: +SKIP
    'personachat_train_00000'
    >>> prompts = format_prompts(samples, max_context_turns=4)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_SYSTEM_PROMPT

__all__ = [
    "FORMATS",
    "DialogueFormatError",
    "DialogueSample",
    "Prompt",
    "SampleError",
    "data_fingerprint",
    "format_prompt",
    "format_prompts",
    "read_dialogues",
    "system_token_count",
]

logger = logging.getLogger(__name__)

FORMATS = ("parlai", "personachat_json", "synthetic_csv", "chitchat", "jsonl")

# ParlAI marks "the partner said nothing yet" (the responder opens the dialogue) with these; they are
# not utterances, so they are left out of the context.
_SILENCE = frozenset({"__SILENCE__", "__ SILENCE __"})

_DEFAULT_SOURCE = {
    "parlai": "personachat",
    "personachat_json": "personachat",
    "synthetic_csv": "synthetic_persona_chat",
    "chitchat": "chitchat",
}

_SPLIT_WORDS = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid",
                "dev": "dev", "test": "test"}

# chitchat-dataset ships without splits; these are made from a hash of the conversation id so they
# are stable across runs and versions (90% / 5% / 5%).
CHITCHAT_SPLITS = ("all", "train", "valid", "test")


class SampleError(ValueError):
    """One sample cannot be used as given: too long for ``max_length``, empty under a tokenizer, or
    without a prompt. The message names the sample (index and id where known) and what would fix it;
    the command line reports it in one line."""


def _same_kind(e: ValueError) -> type[ValueError]:
    """The class to re-raise ``e`` as with a better message: a :class:`SampleError` stays one (the
    command line reports it in one line), anything else is a plain ``ValueError``."""
    return SampleError if isinstance(e, SampleError) else ValueError


class DialogueFormatError(ValueError):
    """A dialogue file is malformed. ``path`` and ``where`` (``line 12``, ``record train[3]``) locate it."""

    def __init__(self, path: str | Path, where: str | None, message: str):
        location = f"{path}" if where is None else f"{path}, {where}"
        super().__init__(f"{location}: {message}")
        self.path = str(path)
        self.where = where


@dataclass(frozen=True)
class DialogueSample:
    """One response turn of a dialogue.

    Attributes:
        sample_id (str): stable id, ``{source}_{split}_{index:05d}`` unless the file gives one.
        persona (tuple[str, ...]): persona sentences of the responder (may be empty).
        context (tuple[str, ...]): earlier turns, oldest first; the last one is the current utterance
            the response answers. Empty only when the responder opens the dialogue.
        response (str): the gold response (never part of the model input).
    """

    sample_id: str
    persona: tuple[str, ...]
    context: tuple[str, ...]
    response: str


@dataclass(frozen=True)
class Prompt:
    """A formatted model input.

    Attributes:
        sample_id (str): id of the sample it was built from.
        text (str): the whole input text.
        system_text (str): the prefix of ``text`` that is the system prompt; its tokens are the ones
            mean pooling leaves out (see :func:`system_token_count`).
        dropped_turns (int): context turns cut from the left (oldest first), by ``max_context_turns``
            or ``max_length``.
        dropped_for_length (int): how many of ``dropped_turns`` were cut to fit ``max_length``.
        add_special_tokens (bool): pass this to the tokenizer: False for chat-template text (the
            template already holds the special tokens), True for plain text.
    """

    sample_id: str
    text: str
    system_text: str
    dropped_turns: int = 0
    dropped_for_length: int = 0
    add_special_tokens: bool = True


# --------------------------------------------------------------------------------------------------
# reading


def _infer_split(path: Path) -> str:
    for word in re.split(r"[^a-z]+", path.stem.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return "all"


def _make_id(source: str, split: str, index: int) -> str:
    return f"{source}_{split}_{index:05d}"


def _not_utf8(path: Path) -> DialogueFormatError:
    """The error for a file that is not UTF-8, naming the line and byte offset of the first bad byte."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return DialogueFormatError(path, "line 1, byte offset 0", "starts with a UTF-16 byte-order mark; this "
                                   "reader takes UTF-8 (with or without a BOM): re-save the file as UTF-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return DialogueFormatError(path, f"line {line}, byte offset {e.start}",
                                   f"is not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); re-save the file as UTF-8")
    return DialogueFormatError(path, None, "is not UTF-8 text")  # pragma: no cover - the caller saw an error


def _read_text(path: Path) -> str:
    # utf-8-sig: a byte-order mark (Excel and Notepad write one) is dropped, not read as text
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _first_line(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(65536)
    head = head.removeprefix(b"\xef\xbb\xbf")
    for raw in head.splitlines():
        line = raw.decode("utf-8", errors="replace").strip()
        if line:
            return line
    return ""


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".csv":
        return "synthetic_csv"
    if suffix == ".txt":
        return "parlai"
    if suffix == ".json":
        return "json"  # personachat_json or chitchat: decided from the parsed content
    head = _first_line(path)
    if re.match(r"\d+ ", head):
        return "parlai"
    if "personas" in head.lower() and "," in head:
        return "synthetic_csv"
    if head.startswith("{"):
        try:
            record = json.loads(head)
        except json.JSONDecodeError:
            return "json"
        if isinstance(record, dict) and "response" in record:
            return "jsonl"
        return "json"
    raise DialogueFormatError(path, "line 1", f"cannot detect the dialogue format from the name or the "
                              f"first line {head[:80]!r}; pass format= one of {', '.join(FORMATS)}")


def _load_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DialogueFormatError(path, f"line {e.lineno}, column {e.colno}", f"is not valid JSON: {e.msg}") from None


def _json_kind(path: Path, data: Any) -> str:
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, list):
            return "personachat_json"
        if isinstance(first, dict) and "messages" in first:
            return "chitchat"
    raise DialogueFormatError(path, None, "unknown JSON layout: expected personachat_self_original.json "
                              "({split: [{'personality': [...], 'utterances': [...]}]}) or the chitchat-dataset "
                              "JSON ({conversation_id: {'messages': [[...]]}})")


def read_dialogues(path: str | Path, *, format: str = "auto", source: str | None = None,
                   split: str | Sequence[str] | None = None,
                   max_samples: int | None = None) -> list[DialogueSample]:
    """Read a dialogue file into samples, one per response turn.

    Args:
        path (str | Path): the file.
        format (str): ``auto`` (default; from the suffix ``.txt``/``.json``/``.csv``/``.jsonl`` or the
            first line) or one of :data:`FORMATS`.
        source (str | None): first part of the generated ids; default per format (``personachat``,
            ``synthetic_persona_chat``, ``chitchat``; the file stem for ``jsonl``).
        split (str | Sequence[str] | None): the split part of the ids. Default: a split word found in
            the file name (``train``, ``valid``, ``test``, ``dev``) or ``all``. For ``personachat_json``
            it selects top-level keys (default: all, in file order). For ``chitchat`` it selects a
            stable hash split of the conversations: ``all`` (default), ``train`` (90%), ``valid``,
            ``test`` (5% each).
        max_samples (int | None): stop after this many samples (the first ones in file order).

    Returns:
        list[DialogueSample]: in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        DialogueFormatError: not UTF-8 (the line and byte offset are named; a byte-order mark is
            accepted and dropped), empty file, unknown format, a malformed line/row/record (the message names
            the file, the line or record, and what was expected), duplicate sample ids, or no sample.
        ValueError: a bad argument.

    Example:
        >>> read_dialogues("convai2/valid_self_original.txt", max_samples=2)[1].sample_id  # doctest: +SKIP
        'personachat_valid_00001'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"dialogue path {path} is a directory, expected a dialogue file")
    if not path.is_file():
        raise FileNotFoundError(f"dialogue file {path} does not exist")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise ValueError(f"max_samples must be None or an int >= 1, got {max_samples!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
    if not _first_line(path):
        raise DialogueFormatError(path, None, "file is empty; expected dialogues")
    fmt = _detect_format(path) if format == "auto" else format

    data = None
    if fmt in ("json", "personachat_json", "chitchat"):
        data = _load_json(path)
        if fmt == "json":
            fmt = _json_kind(path, data)
    if source is None:
        source = _DEFAULT_SOURCE.get(fmt) or re.sub(r"[^A-Za-z0-9]+", "_", path.stem).strip("_") or "dialogue"
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a non-empty string, got {source!r}")

    if fmt == "personachat_json":
        samples: Iterator[DialogueSample] = _read_personachat_json(path, data, source, split)
    else:
        if split is not None and not isinstance(split, str):
            raise ValueError(f"split must be a string for the {fmt} format, got {split!r}")
        if fmt == "chitchat":
            samples = _read_chitchat(path, data, source, split or "all")
        else:
            label = split or _infer_split(path)
            reader = {"parlai": _read_parlai, "synthetic_csv": _read_synthetic_csv, "jsonl": _read_jsonl}[fmt]
            samples = reader(path, source, label)

    out = list(itertools.islice(samples, max_samples))
    if not out:
        raise DialogueFormatError(path, None, f"no dialogue turn with a response found (read as {fmt})")
    seen: dict[str, int] = {}
    for i, s in enumerate(out):
        if s.sample_id in seen:
            raise DialogueFormatError(path, None, f"duplicate sample_id {s.sample_id!r} (samples {seen[s.sample_id]} and {i})")
        seen[s.sample_id] = i
    logger.info("read %d dialogue samples from %s (format %s)", len(out), path, fmt)
    return out


def _read_parlai(path: Path, source: str, split: str) -> Iterator[DialogueSample]:
    index = 0
    prev_num = 0
    persona: list[str] = []
    history: list[str] = []
    started = False  # a dialogue line was seen in the current episode
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(_utf8_lines(path, f), 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            m = re.match(r"(\d+) (.*)$", line, re.S)
            if m is None:
                raise DialogueFormatError(path, f"line {lineno}", "expected '<number> <text>' (ParlAI: a line "
                                          f"number, a space, then text), got {line[:80]!r}")
            num, rest = int(m.group(1)), m.group(2)
            if num == 1:
                persona, history, started = [], [], False
            elif prev_num == 0:
                raise DialogueFormatError(path, f"line {lineno}", f"the first line must be numbered 1, got {num}")
            elif num != prev_num + 1:
                raise DialogueFormatError(path, f"line {lineno}", f"expected line number {prev_num + 1} "
                                          f"(or 1 to start a new episode), got {num}")
            prev_num = num
            if rest.startswith("your persona:"):
                if started:
                    raise DialogueFormatError(path, f"line {lineno}", "persona line after the dialogue started; "
                                              "expected persona lines first in each episode")
                persona.append(rest[len("your persona:"):].strip())
                continue
            if rest.startswith("partner's persona:"):
                # both_* files: the partner's persona is not the responder's, so it is not used
                continue
            fields = rest.split("\t")
            if len(fields) < 2 or not fields[1].strip():
                raise DialogueFormatError(path, f"line {lineno}", "expected 'partner utterance<TAB>reply"
                                          "[<TAB><TAB>candidates]' or 'your persona: ...'")
            partner, reply = fields[0].strip(), fields[1].strip()
            if not partner:
                raise DialogueFormatError(path, f"line {lineno}", "empty partner utterance (use __SILENCE__ "
                                          "when the responder opens the dialogue)")
            started = True
            if partner not in _SILENCE:
                history.append(partner)
            if not history and not persona:
                raise DialogueFormatError(path, f"line {lineno}", "a response with neither persona nor context")
            yield DialogueSample(_make_id(source, split, index), tuple(persona), tuple(history), reply)
            index += 1
            history.append(reply)


def _utf8_lines(path: Path, f) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _str_list(value: Any, *, allow_empty: bool = True) -> bool:
    return isinstance(value, list) and (allow_empty or bool(value)) and all(isinstance(v, str) for v in value)


def _read_personachat_json(path: Path, data: Any, source: str,
                           split: str | Sequence[str] | None) -> Iterator[DialogueSample]:
    if not isinstance(data, dict):
        raise DialogueFormatError(path, None, f"expected a JSON object {{split: [dialogues]}}, got {type(data).__name__}")
    if split is None:
        keys = list(data)
    elif isinstance(split, str):
        keys = [split]
    else:
        keys = list(split)
    for key in keys:
        if key not in data:
            raise DialogueFormatError(path, None, f"split {key!r} is not in the file; available: {', '.join(map(str, data))}")
    for key in keys:
        dialogues = data[key]
        if not isinstance(dialogues, list):
            raise DialogueFormatError(path, f"record {key}", "expected a list of dialogues")
        index = 0
        for d_i, dialogue in enumerate(dialogues):
            where = f"record {key}[{d_i}]"
            if not isinstance(dialogue, dict) or not _str_list(dialogue.get("personality")) \
                    or not isinstance(dialogue.get("utterances"), list):
                raise DialogueFormatError(path, where, "expected {'personality': [str, ...], 'utterances': [...]}")
            persona = tuple(p.strip() for p in dialogue["personality"])
            for u_i, utt in enumerate(dialogue["utterances"]):
                uwhere = f"{where}.utterances[{u_i}]"
                if not isinstance(utt, dict) or not _str_list(utt.get("history")) \
                        or not _str_list(utt.get("candidates"), allow_empty=False):
                    raise DialogueFormatError(path, uwhere, "expected {'history': [str, ...], 'candidates': "
                                              "[str, ..., gold reply]} with at least one candidate")
                context = tuple(h.strip() for h in utt["history"] if h.strip() not in _SILENCE)
                response = utt["candidates"][-1].strip()
                if not response:
                    raise DialogueFormatError(path, uwhere, "the gold reply (last candidate) is empty")
                if not context and not persona:
                    raise DialogueFormatError(path, uwhere, "a response with neither persona nor context")
                yield DialogueSample(_make_id(source, key, index), persona, context, response)
                index += 1


_CSV_COLUMNS = ("user 1 personas", "user 2 personas", "Best Generated Conversation")
# Speaker tags as they occur in the real file, including markdown-decorated ones
# ("*User 1:* hi", "* User 2: hello *").
_CSV_TURN = re.compile(r"^[\s*_]*user\s*([12])\s*[*_]*\s*:(.*)$", re.I)


def _csv_persona(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _read_synthetic_csv(path: Path, source: str, split: str) -> Iterator[DialogueSample]:
    index = 0
    appended = merged = short = 0  # reported in one log line at the end
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(_utf8_lines(path, f))
        try:
            header = next(reader)
        except csv.Error as e:
            raise DialogueFormatError(path, "line 1", f"is not valid CSV: {e}") from None
        missing = [c for c in _CSV_COLUMNS if c not in header]
        if missing:
            raise DialogueFormatError(path, "line 1", f"header lacks the column(s) {missing}; expected the "
                                      f"Synthetic-Persona-Chat columns {list(_CSV_COLUMNS)}, got {header}")
        col = {c: header.index(c) for c in _CSV_COLUMNS}
        row_start = reader.line_num + 1
        for row_no in itertools.count(1):
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DialogueFormatError(path, f"line {row_start}", f"is not valid CSV: {e}") from None
            where = f"line {row_start} (row {row_no})"
            next_start = reader.line_num + 1
            if not row or all(not c.strip() for c in row):
                row_start = next_start
                continue
            if len(row) != len(header):
                raise DialogueFormatError(path, where, f"expected {len(header)} columns, got {len(row)}")
            personas = {"1": _csv_persona(row[col["user 1 personas"]]),
                        "2": _csv_persona(row[col["user 2 personas"]])}
            turns: list[list[str]] = []  # [speaker, text]
            preamble: list[str] = []
            for line in row[col["Best Generated Conversation"]].splitlines():
                if not line.strip():
                    continue
                m = _CSV_TURN.match(line)
                if m is None:
                    # narration or a wrapped line ("[A few minutes later]", "* * *", recipe lines): kept
                    # with the turn it follows (or the first turn) rather than dropped; counted below
                    if turns:
                        turns[-1][1] += "\n" + line.strip()
                    else:
                        preamble.append(line.strip())
                    appended += 1
                    continue
                speaker = m.group(1)
                text = m.group(2).lstrip(" *_")
                if line.lstrip().startswith(("*", "_")):
                    text = text.rstrip(" *_")
                text = text.strip()
                if turns and turns[-1][0] == speaker:
                    # two lines by the same speaker are one turn, so turns alternate
                    turns[-1][1] += "\n" + text
                    merged += 1
                    continue
                if not turns and preamble:
                    text = "\n".join([*preamble, text])
                turns.append([speaker, text])
            if not turns:
                raise DialogueFormatError(path, where, "expected turns starting 'User 1:' or 'User 2:'; the "
                                          "conversation has none")
            if len(turns) < 2:
                short += 1
            for t in range(1, len(turns)):
                speaker, response = turns[t]
                if not response:
                    raise DialogueFormatError(path, f"{where}, turn {t + 1}", f"empty turn of User {speaker}")
                yield DialogueSample(_make_id(source, split, index), personas[speaker],
                                     tuple(text for _, text in turns[:t]), response)
                index += 1
            row_start = next_start
    if appended or merged or short:
        logger.info("%s: %d untagged lines kept with the turn before them (or the first turn), %d consecutive same-speaker "
                    "lines merged into one turn, %d conversations with a single turn (no response)",
                    path, appended, merged, short)


def _chitchat_split(conversation_id: str) -> str:
    bucket = int(hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def _read_chitchat(path: Path, data: Any, source: str, split: str) -> Iterator[DialogueSample]:
    if split not in CHITCHAT_SPLITS:
        raise ValueError(f"split for chitchat must be one of {', '.join(CHITCHAT_SPLITS)}, got {split!r}")
    if not isinstance(data, dict):
        raise DialogueFormatError(path, None, "expected a JSON object {conversation_id: {'messages': [...]}}")
    index = 0
    for conv_id, conv in data.items():
        where = f"record {conv_id!r}"
        if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
            raise DialogueFormatError(path, where, "expected {'messages': [[{'text': str, 'sender': str}, ...], ...]}")
        if split != "all" and _chitchat_split(conv_id) != split:
            continue
        turns: list[tuple[str, str]] = []  # (sender, text)
        for g_i, group in enumerate(conv["messages"]):
            gwhere = f"{where}.messages[{g_i}]"
            if not isinstance(group, list) or not group or not all(
                    isinstance(m, dict) and isinstance(m.get("text"), str) and isinstance(m.get("sender"), str)
                    for m in group):
                raise DialogueFormatError(path, gwhere, "expected a non-empty list of {'text': str, 'sender': str}")
            senders = {m["sender"] for m in group}
            if len(senders) != 1:
                raise DialogueFormatError(path, gwhere, f"expected the messages of one sender, got {len(senders)} senders")
            text = " ".join(m["text"].strip() for m in group if m["text"].strip())
            sender = group[0]["sender"]
            if turns and turns[-1][0] == sender:
                turns[-1] = (sender, turns[-1][1] + " " + text)  # keep turns alternating
            else:
                turns.append((sender, text))
        turns = [t for t in turns if t[1]]
        for t in range(1, len(turns)):
            yield DialogueSample(_make_id(source, split, index), (),
                                 tuple(text for _, text in turns[:t]), turns[t][1])
            index += 1


_JSONL_KEYS = ("sample_id", "persona", "context", "response")


def _read_jsonl(path: Path, source: str, split: str) -> Iterator[DialogueSample]:
    index = 0
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(_utf8_lines(path, f), 1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DialogueFormatError(path, where, f"is not valid JSON ({e.msg}); expected one object a line") from None
            if not isinstance(rec, dict):
                raise DialogueFormatError(path, where, f"expected a JSON object, got {type(rec).__name__}")
            unknown = sorted(set(rec) - set(_JSONL_KEYS))
            if unknown:
                raise DialogueFormatError(path, where, f"unknown key(s) {unknown}; expected {list(_JSONL_KEYS)}")
            persona = rec.get("persona", [])
            if isinstance(persona, str):
                persona = [p for p in persona.splitlines() if p.strip()]
            if not _str_list(persona):
                raise DialogueFormatError(path, where, "'persona' must be a list of strings or a string")
            context = rec.get("context")
            if not _str_list(context):
                raise DialogueFormatError(path, where, "'context' must be a list of strings (oldest turn first)")
            response = rec.get("response")
            if not isinstance(response, str) or not response.strip():
                raise DialogueFormatError(path, where, "'response' must be a non-empty string")
            if any(not c.strip() for c in context):
                raise DialogueFormatError(path, where, "'context' holds an empty turn")
            if not context and not persona:
                raise DialogueFormatError(path, where, "expected a persona or at least one context turn")
            sample_id = rec.get("sample_id")
            if sample_id is None:
                sample_id = _make_id(source, split, index)
            elif not isinstance(sample_id, str) or not sample_id:
                raise DialogueFormatError(path, where, "'sample_id' must be a non-empty string")
            yield DialogueSample(sample_id, tuple(p.strip() for p in persona), tuple(c.strip() for c in context),
                                 response.strip())
            index += 1


# --------------------------------------------------------------------------------------------------
# prompts


def _body(persona: Sequence[str], turns: Sequence[str]) -> str:
    """Persona and dialogue as plain text; starts with a letter so that the system prompt's trailing
    newline stays a token boundary."""
    parts = []
    if persona:
        parts.append("Your persona:\n" + "\n".join(f"- {p}" for p in persona))
    if turns:
        # Turns alternate and the last one (the current utterance) is the partner's.
        n = len(turns)
        parts.append("Dialogue:\n" + "\n".join(
            f"{'Partner' if (n - 1 - i) % 2 == 0 else 'You'}: {t}" for i, t in enumerate(turns)))
    return "\n\n".join(parts)


def _render(sample_id: str, system_prompt: str, body: str, tokenizer: Any,
            use_chat_template: bool) -> tuple[str, str]:
    """(text, system_text) for one body."""
    if not use_chat_template:
        system_text = system_prompt.rstrip() + "\n" if system_prompt.strip() else ""
        return system_text + body, system_text
    messages = [{"role": "user", "content": body}]
    if system_prompt.strip():
        messages.insert(0, {"role": "system", "content": system_prompt})
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja raises TemplateError for templates without a system role
        if len(messages) == 1:
            raise
        logger.debug("chat template refused a system message (%s); putting the system prompt in the user turn", e)
        messages = [{"role": "user", "content": system_prompt + "\n\n" + body}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not system_prompt.strip():
        return text, ""
    try:
        head = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=False) \
            if messages[0]["role"] == "system" else None
    except Exception:
        head = None
    if head and system_prompt in head and text.startswith(head):
        return text, head
    # Templates that fold the system prompt into the first user turn: the system part ends with it.
    pos = text.find(system_prompt)
    if pos < 0:
        raise SampleError(f"sample {sample_id}: the chat template's output does not contain the system prompt; "
                          "use use_chat_template=False")
    return text, text[:pos + len(system_prompt)]


def _count_tokens(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[int]:
    enc = tokenizer(texts, add_special_tokens=add_special_tokens)
    return [len(ids) for ids in enc["input_ids"]]


def _check_args(max_context_turns: int, max_length: int | None, tokenizer: Any, use_chat_template: bool) -> None:
    if isinstance(max_context_turns, bool) or not isinstance(max_context_turns, int) or max_context_turns < 1:
        raise ValueError(f"max_context_turns must be an int >= 1, got {max_context_turns!r}")
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be None or an int >= 1, got {max_length!r}")
        if tokenizer is None:
            raise ValueError("max_length needs a tokenizer to count tokens")
    if use_chat_template and tokenizer is None:
        raise ValueError("use_chat_template=True needs a tokenizer")


def format_prompt(sample: DialogueSample, *, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                  max_context_turns: int = 4, tokenizer: Any = None, use_chat_template: bool = False,
                  max_length: int | None = None, _length: int | None = None) -> Prompt:
    """Build the model input of one sample: system prompt, persona, the last turns of context.

    Plain layout (``use_chat_template=False``)::

        {system_prompt}
        Your persona:
        - {persona sentence}

        Dialogue:
        You: {older turn}
        Partner: {current utterance}

    Turns are labelled assuming they alternate and the last one is the partner's (the utterance the
    response answers). With ``use_chat_template=True`` the system prompt is the system message, the
    persona and dialogue the user message, rendered by ``tokenizer.apply_chat_template`` with the
    generation prompt. The response is never part of the input.

    Args:
        sample (DialogueSample): the sample.
        system_prompt (str): the same for every model. Defaults to the seed's prompt.
        max_context_turns (int): keep at most this many context turns, counting the current utterance;
            older ones are cut from the left. Defaults to 4.
        tokenizer: a Hugging Face tokenizer; needed for ``use_chat_template`` and ``max_length``.
        use_chat_template (bool): render with the tokenizer's chat template. Defaults to False.
        max_length (int | None): token budget (counted with ``add_special_tokens`` as in
            :attr:`Prompt.add_special_tokens`); the oldest turns are dropped until it fits.

    Returns:
        Prompt: ``text.startswith(system_text)``; ``dropped_turns`` tells how many turns were cut.

    Raises:
        ValueError: bad arguments, or the prompt does not fit ``max_length`` even with only the current
            utterance (the message names the sample).

    Example:
        >>> s = DialogueSample("x_all_00000", ("i like cats.",), ("hi", "hello, how are you?"), "fine")
        >>> p = format_prompt(s, system_prompt="Analyze.")
        >>> p.text.splitlines()[:3], p.system_text
        (['Analyze.', 'Your persona:', '- i like cats.'], 'Analyze.\\n')
    """
    _check_args(max_context_turns, max_length, tokenizer, use_chat_template)
    context = sample.context
    keep = min(len(context), max_context_turns)
    cut = len(context) - keep

    def build(k: int) -> tuple[str, str]:
        return _render(sample.sample_id, system_prompt, _body(sample.persona, context[len(context) - k:]),
                       tokenizer, use_chat_template)

    text, system_text = build(keep)
    if not text[len(system_text):].strip():
        raise SampleError(f"sample {sample.sample_id}: neither persona nor context; nothing to put in the prompt")
    dropped_for_length = 0
    add_special = not use_chat_template
    if max_length is not None:
        n = _length if _length is not None else _count_tokens(tokenizer, [text], add_special)[0]
        if n > max_length:
            lo = 1 if keep >= 1 else 0
            length_at = {keep: n}

            def fits(k: int) -> bool:
                if k not in length_at:
                    length_at[k] = _count_tokens(tokenizer, [build(k)[0]], add_special)[0]
                return length_at[k] <= max_length

            if not fits(lo):
                raise SampleError(f"sample {sample.sample_id}: the prompt is {length_at[lo]} tokens with only "
                                  f"{'the current utterance' if lo else 'the persona'}, over max_length={max_length}; "
                                  "raise max_length or shorten the system prompt / persona")
            # binary search for the most turns that fit (fewer turns never make the prompt longer)
            hi = keep - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(mid):
                    lo = mid
                else:
                    hi = mid - 1
            dropped_for_length = keep - lo
            keep = lo
            text, system_text = build(keep)
    if dropped_for_length:
        logger.debug("sample %s: %d context turns dropped to fit max_length=%s", sample.sample_id,
                     dropped_for_length, max_length)
    return Prompt(sample.sample_id, text, system_text, cut + dropped_for_length, dropped_for_length, add_special)


def format_prompts(samples: Iterable[DialogueSample], *, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                   max_context_turns: int = 4, tokenizer: Any = None, use_chat_template: bool = False,
                   max_length: int | None = None) -> list[Prompt]:
    """:func:`format_prompt` over many samples, with one summary log line about truncation.

    Token counts are taken in one batched tokenizer call; only prompts over ``max_length`` are
    tokenized again while turns are dropped.

    Args:
        samples (Iterable[DialogueSample]): the samples.
        system_prompt (str): as in :func:`format_prompt`.
        max_context_turns (int): as in :func:`format_prompt`. Defaults to 4.
        tokenizer: as in :func:`format_prompt`.
        use_chat_template (bool): as in :func:`format_prompt`. Defaults to False.
        max_length (int | None): as in :func:`format_prompt`.

    Returns:
        list[Prompt]: in the order of ``samples``.

    Raises:
        ValueError: as :func:`format_prompt`.

    Example:
        >>> s = DialogueSample("x_all_00000", (), ("a", "b", "c"), "d")
        >>> format_prompts([s], max_context_turns=2)[0].dropped_turns
        1
    """
    samples = list(samples)
    _check_args(max_context_turns, max_length, tokenizer, use_chat_template)
    kwargs = dict(system_prompt=system_prompt, max_context_turns=max_context_turns, tokenizer=tokenizer,
                  use_chat_template=use_chat_template)
    prompts = [format_prompt(s, **kwargs) for s in samples]
    if max_length is not None and prompts:
        lengths = _count_tokens(tokenizer, [p.text for p in prompts], not use_chat_template)
        prompts = [p if n <= max_length else format_prompt(s, **kwargs, max_length=max_length, _length=n)
                   for s, p, n in zip(samples, prompts, lengths)]
    by_turns = sum(1 for p in prompts if p.dropped_turns > p.dropped_for_length)
    by_length = sum(1 for p in prompts if p.dropped_for_length)
    truncated = sum(1 for p in prompts if p.dropped_turns)
    if truncated:
        logger.warning("%d of %d prompts truncated from the left (%d context turns dropped in total): %d by "
                       "max_context_turns=%d, %d by max_length=%s", truncated, len(prompts),
                       sum(p.dropped_turns for p in prompts), by_turns, max_context_turns, by_length, max_length)
    else:
        logger.info("%d prompts formatted, none truncated", len(prompts))
    return prompts


def system_token_count(prompt: Prompt, tokenizer: Any) -> int:
    """Number of leading tokens of ``prompt.text`` that belong to the system prompt.

    Tokenizes ``system_text`` and ``text`` (with ``prompt.add_special_tokens``) and checks that the
    first is a prefix of the second, so that the boundary falls on a token boundary.

    Args:
        prompt (Prompt): from :func:`format_prompt`.
        tokenizer: the tokenizer of the model the prompt goes to.

    Returns:
        int: the count (special tokens such as BOS included).

    Raises:
        ValueError: the system text does not end on a token boundary for this tokenizer.

    Example:
        >>> n = system_token_count(prompt, tokenizer)  # doctest: +SKIP
    """
    full = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
    head = tokenizer(prompt.system_text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    n = len(head)
    # tokenizers that append EOS add it to the system text alone too; it is not part of the prefix
    while n > 0 and full[:n] != head[:n] and head[n - 1] in special:
        n -= 1
    if full[:n] != head[:n] or n > len(full):
        raise SampleError(f"sample {prompt.sample_id}: the system prompt does not end on a token boundary for "
                          f"this tokenizer ({type(tokenizer).__name__})")
    return n


def data_fingerprint(samples: Iterable[DialogueSample]) -> str:
    """sha256 over the samples' ids and texts, in order; stable across runs and Python versions.

    Args:
        samples (Iterable[DialogueSample]): the samples.

    Returns:
        str: 64 hex digits.

    Example:
        >>> data_fingerprint([DialogueSample("a", (), ("hi",), "yo")])[:12]  # doctest: +SKIP
    """
    h = hashlib.sha256(b"torch_curriculum.dialogue_samples.v1\n")
    for s in samples:
        record = [s.sample_id, list(s.persona), list(s.context), s.response]
        h.update(json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()
