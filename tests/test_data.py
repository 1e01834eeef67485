"""Dialogue readers, prompt formatting and fingerprints, on small files in the real formats and on the
real Synthetic-Persona-Chat CSV and chitchat JSON."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_curriculum.config import DEFAULT_SYSTEM_PROMPT
from torch_curriculum.data import (
    DialogueFormatError,
    DialogueSample,
    Prompt,
    data_fingerprint,
    format_prompt,
    format_prompts,
    read_dialogues,
    system_token_count,
)

SPC_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / \
    "Synthetic-Persona-Chat_valid.csv"

# --------------------------------------------------------------------------------------------------
# ParlAI text

PARLAI = (
    "1 your persona: i like to remodel homes.\n"
    "2 your persona: i like to go hunting.\n"
    "3 partner's persona: i am a vegan.\n"
    "4 hi , how are you doing ?\tyou must be very fast . hunting is fun .\t\tno|you must be very fast . hunting is fun .\n"
    "5 i am ! for my hobby i like to do canning .\ti also remodel homes .\t\ta|b|i also remodel homes .\n"
    "1 your persona: my favorite color is blue.\n"
    "2 __SILENCE__\thello , what is up ?\t\tx|hello , what is up ?\n"
    "3 not much , you ?\tjust relaxing .\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parlai_episodes_context_and_ids(tmp_path):
    samples = read_dialogues(write(tmp_path, "train_self_original.txt", PARLAI))
    assert [s.sample_id for s in samples] == [f"personachat_train_{i:05d}" for i in range(4)]
    a, b, c, d = samples
    assert a.persona == ("i like to remodel homes.", "i like to go hunting.")  # partner's persona not used
    assert a.context == ("hi , how are you doing ?",)
    assert a.response == "you must be very fast . hunting is fun ."
    assert b.context == ("hi , how are you doing ?", "you must be very fast . hunting is fun .",
                         "i am ! for my hobby i like to do canning .")
    assert b.response == "i also remodel homes ."
    # a new episode resets persona and history; __SILENCE__ is not an utterance
    assert c.persona == ("my favorite color is blue.",)
    assert c.context == ()
    assert c.response == "hello , what is up ?"
    assert d.context == ("hello , what is up ?", "not much , you ?")


@pytest.mark.parametrize("bad, line, expected", [
    ("1 your persona: a.\n2 hello there no tab\n", 2, "partner utterance<TAB>reply"),
    ("1 your persona: a.\n3 hi\tho\n", 2, "expected line number 2"),
    ("1 your persona: a.\nhi\tho\n", 2, "'<number> <text>'"),
    ("2 hi\tho\n", 1, "numbered 1"),
    ("1 your persona: a.\n2 hi\tho\n3 your persona: b.\n", 3, "persona line after"),
    ("1 your persona: a.\n2 hi\t  \n", 2, "partner utterance<TAB>reply"),
])
def test_parlai_malformed_names_file_and_line(tmp_path, bad, line, expected):
    path = write(tmp_path, "valid_x.txt", bad)
    with pytest.raises(DialogueFormatError, match=expected) as info:
        read_dialogues(path)
    assert str(path) in str(info.value) and f"line {line}" in str(info.value)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------------------
# personachat_self_original.json

PC_JSON = {
    "train": [
        {"personality": ["i like cats.", "i am tall."],
         "utterances": [
             {"history": ["__ SILENCE __"], "candidates": ["wrong", "hi there!"]},
             {"history": ["__ SILENCE __", "hi there!", "hello, do you have pets?"],
              "candidates": ["no", "yes, two cats."]}]},
        {"personality": ["i drive a bus."],
         "utterances": [{"history": ["good morning"], "candidates": ["morning! off to work."]}]},
    ],
    "valid": [
        {"personality": ["i sing."], "utterances": [{"history": ["hey"], "candidates": ["la la"]}]},
    ],
}


def test_personachat_json_splits_and_gold_reply(tmp_path):
    path = write(tmp_path, "personachat_self_original.json", json.dumps(PC_JSON))
    samples = read_dialogues(path)
    assert [s.sample_id for s in samples] == ["personachat_train_00000", "personachat_train_00001",
                                              "personachat_train_00002", "personachat_valid_00000"]
    assert samples[0].context == () and samples[0].response == "hi there!"
    assert samples[1].context == ("hi there!", "hello, do you have pets?")
    assert samples[1].response == "yes, two cats."  # gold = last candidate
    assert samples[1].persona == ("i like cats.", "i am tall.")
    assert samples[2].persona == ("i drive a bus.",)
    only_valid = read_dialogues(path, split="valid")
    assert [s.sample_id for s in only_valid] == ["personachat_valid_00000"]
    assert only_valid[0] == samples[3]
    with pytest.raises(DialogueFormatError, match="split 'test' is not in the file; available: train, valid"):
        read_dialogues(path, split="test")


def test_personachat_json_malformed_names_record(tmp_path):
    bad = json.loads(json.dumps(PC_JSON))
    bad["train"][1]["utterances"][0]["candidates"] = []
    path = write(tmp_path, "personachat_self_original.json", json.dumps(bad))
    with pytest.raises(DialogueFormatError, match=r"record train\[1\]\.utterances\[0\].*candidates") as info:
        read_dialogues(path)
    assert str(path) in str(info.value)
    broken = write(tmp_path, "broken.json", '{"train": [\n{"personality": [}\n')
    with pytest.raises(DialogueFormatError, match=r"line 2, column \d+: is not valid JSON"):
        read_dialogues(broken)


# --------------------------------------------------------------------------------------------------
# Synthetic-Persona-Chat CSV


def write_spc(tmp_path: Path, rows: list[tuple[str, str, str]], name="Synthetic-Persona-Chat_train.csv") -> Path:
    path = tmp_path / name
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        w.writerows(rows)
    return path


def test_synthetic_csv_turns_personas_and_real_file_quirks(tmp_path):
    path = write_spc(tmp_path, [
        ("I bake.\nI knit.", "I am a boy.\nI fly.",
         "User 1: Hi!\nUser 2: Hello!\n\nUser 1: What do you do?\nUser 2: I fly.\n[A few minutes later]\n"
         "User 1: Cool."),
        ("I swim.", "I read.", "*User 1:* Hey *\n*User 2:* Hi, how are you?\nUser 2: I read books.\nUser 1: Nice"),
    ])
    s = read_dialogues(path)
    assert [x.sample_id for x in s] == [f"synthetic_persona_chat_train_{i:05d}" for i in range(6)]
    assert s[0].persona == ("I am a boy.", "I fly.") and s[0].context == ("Hi!",) and s[0].response == "Hello!"
    assert s[1].persona == ("I bake.", "I knit.") and s[1].response == "What do you do?"
    assert s[2].response == "I fly.\n[A few minutes later]"  # narration stays with its turn
    assert s[3].context == ("Hi!", "Hello!", "What do you do?", "I fly.\n[A few minutes later]")
    # markdown-decorated tags; two lines by the same speaker are one turn
    assert s[4].context == ("Hey",) and s[4].response == "Hi, how are you?\nI read books."
    assert s[5].persona == ("I swim.",) and s[5].response == "Nice"


def test_synthetic_csv_malformed(tmp_path):
    no_col = tmp_path / "x.csv"
    no_col.write_text("user 1 personas,conversation\na,b\n", encoding="utf-8")
    with pytest.raises(DialogueFormatError, match=r"line 1: header lacks the column\(s\) \['user 2 personas'"):
        read_dialogues(no_col)
    # the second data row starts on line 5: the first one spans lines 2-4 (two quoted newlines)
    path = write_spc(tmp_path, [("a.\nb.", "c.", "User 1: hi\nUser 2: ho"), ("a.", "c.", "no tags here")])
    with pytest.raises(DialogueFormatError, match=r"line 5 \(row 2\): expected turns starting 'User 1:'") as info:
        read_dialogues(path)
    assert str(path) in str(info.value)


def test_synthetic_csv_real_file():
    if not SPC_CSV.is_file():
        pytest.skip(f"{SPC_CSV} is not present")
    samples = read_dialogues(SPC_CSV)
    assert samples[0].sample_id == "synthetic_persona_chat_valid_00000"
    with SPC_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1000
    # independent look at the first conversation: its turn lines and User 2's persona
    lines = [ln for ln in rows[0]["Best Generated Conversation"].splitlines() if ln.strip()]
    assert all(ln.startswith(("User 1: ", "User 2: ")) for ln in lines)
    persona2 = tuple(p.strip() for p in rows[0]["user 2 personas"].splitlines() if p.strip())
    first = samples[: len(lines) - 1]
    assert [s.response for s in first] == [ln[8:].strip() for ln in lines[1:]]
    assert first[0].persona == persona2 and first[0].context == (lines[0][8:].strip(),)
    assert first[-1].context == tuple(ln[8:].strip() for ln in lines[:-1])
    # every conversation gives (turns - 1) samples, so there are fewer samples than tagged lines
    n_tagged = sum(ln.strip()[:7].lower().lstrip("*_ ").startswith("user") for r in rows
                   for ln in r["Best Generated Conversation"].splitlines())
    assert 20000 < len(samples) < n_tagged
    assert len({s.sample_id for s in samples}) == len(samples)
    assert all(s.response and s.context for s in samples)


# --------------------------------------------------------------------------------------------------
# chitchat JSON


def chitchat_conv(texts_by_turn: list[tuple[str, list[str]]]) -> dict:
    return {"messages": [[{"text": t, "timestamp": "2018-05-02T19:38:15Z", "sender": who} for t in texts]
                         for who, texts in texts_by_turn],
            "start": "2018-05-02T19:38:15Z", "prompt": "", "ratings": {}}


def test_chitchat_format_and_hash_splits(tmp_path):
    data = {f"conv-{i}": chitchat_conv([("a", ["Hello", f"how are you {i}?"]), ("b", ["fine"]),
                                        ("a", ["good"])]) for i in range(60)}
    path = write(tmp_path, "dataset.json", json.dumps(data))
    all_ = read_dialogues(path)
    assert len(all_) == 120 and all_[0].sample_id == "chitchat_all_00000"
    assert all_[0].persona == () and all_[0].context == ("Hello how are you 0?",) and all_[0].response == "fine"
    assert all_[1].context == ("Hello how are you 0?", "fine") and all_[1].response == "good"
    parts = {sp: read_dialogues(path, split=sp) for sp in ("train", "valid", "test")}
    assert len(parts["train"]) > len(parts["valid"]) + len(parts["test"])
    assert parts["train"][0].sample_id == "chitchat_train_00000"
    # the splits partition the conversations
    keys = [(s.context[0], s.response) for sp in parts.values() for s in sp]
    assert sorted(keys) == sorted((s.context[0], s.response) for s in all_)
    with pytest.raises(ValueError, match="split for chitchat must be one of"):
        read_dialogues(path, split="dev")
    data["conv-7"]["messages"][1].append({"text": "x", "timestamp": "", "sender": "a"})
    bad = write(tmp_path, "bad.json", json.dumps(data))
    with pytest.raises(DialogueFormatError, match=r"record 'conv-7'\.messages\[1\]: expected the messages of one sender"):
        read_dialogues(bad)


def test_chitchat_real_package_file():
    from torch_curriculum.bundled import chitchat_path, load_chitchat

    try:
        path = chitchat_path()
    except ImportError:
        pytest.skip("chitchat-dataset is not installed")
    samples = read_dialogues(path, max_samples=500)
    raw = json.loads(path.read_text(encoding="utf-8"))
    conv = next(iter(raw.values()))["messages"]
    turns = [" ".join(m["text"].strip() for m in group) for group in conv]
    assert samples[0].context == (turns[0],) and samples[0].response == turns[1]
    assert samples[1].context == tuple(turns[:2])
    assert load_chitchat(max_samples=500) == samples
    assert len(samples) == 500 and all(s.persona == () for s in samples)


# --------------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_records_and_ids(tmp_path):
    lines = [
        {"persona": ["i like tea."], "context": ["hi", "hello"], "response": "how are you?"},
        {"sample_id": "mine-1", "persona": "i run.\ni swim.", "context": ["yo"], "response": "hey"},
        {"context": ["what's up"], "response": "nothing"},
    ]
    path = write(tmp_path, "my dialogs.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    s = read_dialogues(path)
    assert [x.sample_id for x in s] == ["my_dialogs_all_00000", "mine-1", "my_dialogs_all_00002"]
    assert s[1].persona == ("i run.", "i swim.") and s[2].persona == ()
    assert read_dialogues(path, source="faq", split="train")[0].sample_id == "faq_train_00000"


@pytest.mark.parametrize("record, expected", [
    ('{"context": ["a"], "response": "b"', "is not valid JSON"),
    ('{"context": ["a"]}', "'response' must be a non-empty string"),
    ('{"context": "a", "response": "b"}', "'context' must be a list of strings"),
    ('{"context": ["a"], "response": "b", "label": 1}', r"unknown key\(s\) \['label'\]"),
    ('{"context": [], "response": "b"}', "expected a persona or at least one context turn"),
    ('["a", "b"]', "expected a JSON object"),
])
def test_jsonl_malformed_names_line(tmp_path, record, expected):
    good = json.dumps({"context": ["a"], "response": "b"})
    path = write(tmp_path, "d.jsonl", f"{good}\n{good}\n{record}\n")
    with pytest.raises(DialogueFormatError, match=expected) as info:
        read_dialogues(path)
    assert f"{path}, line 3" in str(info.value)


def test_jsonl_duplicate_ids(tmp_path):
    rec = json.dumps({"sample_id": "x", "context": ["a"], "response": "b"})
    with pytest.raises(DialogueFormatError, match="duplicate sample_id 'x'"):
        read_dialogues(write(tmp_path, "d.jsonl", f"{rec}\n{rec}\n"))


# --------------------------------------------------------------------------------------------------
# detection, empty files, options


def test_autodetect_without_suffix_and_explicit_format(tmp_path):
    assert read_dialogues(write(tmp_path, "train_dump", PARLAI))[0].sample_id == "personachat_train_00000"
    rec = json.dumps({"context": ["a"], "response": "b"})
    assert read_dialogues(write(tmp_path, "records.data", rec + "\n"))[0].response == "b"
    assert len(read_dialogues(write(tmp_path, "x.log", PARLAI), format="parlai")) == 4
    with pytest.raises(DialogueFormatError, match="cannot detect the dialogue format"):
        read_dialogues(write(tmp_path, "notes.md", "# hello\n"))
    with pytest.raises(DialogueFormatError, match="unknown JSON layout"):
        read_dialogues(write(tmp_path, "other.json", '{"a": 1}'))
    with pytest.raises(ValueError, match="format must be 'auto' or one of"):
        read_dialogues(write(tmp_path, "y.txt", PARLAI), format="xml")


def test_empty_and_missing_files(tmp_path):
    for text in ("", "\n  \n"):
        path = write(tmp_path, "train.txt", text)
        with pytest.raises(DialogueFormatError, match="file is empty") as info:
            read_dialogues(path)
        assert str(path) in str(info.value)
    with pytest.raises(DialogueFormatError, match="no dialogue turn with a response"):
        read_dialogues(write(tmp_path, "p.txt", "1 your persona: i sing.\n"))
    with pytest.raises(FileNotFoundError):
        read_dialogues(tmp_path / "nope.txt")


def test_ids_stable_and_max_samples_is_a_prefix(tmp_path):
    path = write(tmp_path, "train_self_original.txt", PARLAI)
    first, again = read_dialogues(path), read_dialogues(path)
    assert first == again and data_fingerprint(first) == data_fingerprint(again)
    assert read_dialogues(path, max_samples=2) == first[:2]
    with pytest.raises(ValueError, match="max_samples"):
        read_dialogues(path, max_samples=0)


# --------------------------------------------------------------------------------------------------
# prompts

SAMPLE = DialogueSample("t_all_00000", ("i like cats.", "i am tall."),
                        ("turn one", "turn two", "turn three", "turn four", "turn five", "current utterance"),
                        "THE RESPONSE")


def test_plain_prompt_layout_and_left_truncation():
    p = format_prompt(SAMPLE, max_context_turns=4)
    assert isinstance(p, Prompt) and p.sample_id == SAMPLE.sample_id
    assert p.system_text == DEFAULT_SYSTEM_PROMPT + "\n" and p.text.startswith(p.system_text)
    assert p.dropped_turns == 2 and p.dropped_for_length == 0 and p.add_special_tokens
    assert "THE RESPONSE" not in p.text and "turn two" not in p.text
    lines = p.text.splitlines()
    assert lines[-4:] == ["You: turn three", "Partner: turn four", "You: turn five", "Partner: current utterance"]
    assert "- i like cats." in lines and "- i am tall." in lines
    whole = format_prompt(SAMPLE, max_context_turns=10, system_prompt="Be brief.\n")
    assert whole.dropped_turns == 0 and whole.text.startswith("Be brief.\nYour persona:")
    assert "You: turn one" in whole.text
    first_turn = DialogueSample("t_all_00001", ("i like cats.",), (), "hello!")
    assert format_prompt(first_turn).text.endswith("- i like cats.")
    with pytest.raises(ValueError, match="t_all_00002: neither persona nor context"):
        format_prompt(DialogueSample("t_all_00002", (), (), "x"))
    with pytest.raises(ValueError, match="max_context_turns"):
        format_prompt(SAMPLE, max_context_turns=0)
    with pytest.raises(ValueError, match="max_length needs a tokenizer"):
        format_prompt(SAMPLE, max_length=10)


@settings(max_examples=60, deadline=None)
@given(context=st.lists(st.text(alphabet="abc xyz", min_size=1, max_size=8).map(str.strip).filter(bool),
                        min_size=1, max_size=12),
       k=st.integers(1, 15))
def test_max_context_turns_keeps_the_last_turns_in_order(context, k):
    s = DialogueSample("h_all_00000", (), tuple(context), "r")
    p = format_prompt(s, max_context_turns=k, system_prompt="")
    assert p.dropped_turns == max(0, len(context) - k)
    body = p.text.split("Dialogue:\n", 1)[1].splitlines()
    assert [ln.split(": ", 1)[1] for ln in body] == context[-k:]
    assert body[-1].startswith("Partner: ")


def test_format_prompts_reports_truncation(caplog):
    samples = [SAMPLE, DialogueSample("t_all_00003", (), ("only",), "r")]
    with caplog.at_level(logging.INFO, logger="torch_curriculum.data"):
        prompts = format_prompts(samples, max_context_turns=3)
    assert [p.dropped_turns for p in prompts] == [3, 0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 of 2 prompts truncated" in warnings[0].getMessage()
    assert "3 context turns dropped" in warnings[0].getMessage()


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer trained here, offline, on dialogue text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [DEFAULT_SYSTEM_PROMPT, "Your persona:", "Dialogue:", "Partner: You:", *SAMPLE.context, *SAMPLE.persona]
    tk.train_from_iterator(corpus * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    return tok


def n_tokens(tok, text, special=True):
    return len(tok(text, add_special_tokens=special)["input_ids"])


def test_max_length_drops_oldest_turns_until_it_fits(bpe_tokenizer, caplog):
    tok = bpe_tokenizer
    full = format_prompt(SAMPLE, max_context_turns=6, tokenizer=tok)
    with_one = format_prompt(DialogueSample("x", SAMPLE.persona, SAMPLE.context[-1:], "r"), tokenizer=tok)
    budget = (n_tokens(tok, full.text) + n_tokens(tok, with_one.text)) // 2
    p = format_prompt(SAMPLE, max_context_turns=6, tokenizer=tok, max_length=budget)
    assert n_tokens(tok, p.text) <= budget
    kept = 6 - p.dropped_turns
    assert 1 <= kept < 6 and p.dropped_for_length == p.dropped_turns
    # one more turn would not have fitted: the cut is the smallest possible
    one_more = format_prompt(DialogueSample("x", SAMPLE.persona, SAMPLE.context[-(kept + 1):], "r"),
                             max_context_turns=6, tokenizer=tok)
    assert n_tokens(tok, one_more.text) > budget
    # the batched helper gives the same prompts and reports the length cuts
    with caplog.at_level(logging.WARNING, logger="torch_curriculum.data"):
        batch = format_prompts([SAMPLE, SAMPLE], max_context_turns=6, tokenizer=tok, max_length=budget)
    assert batch == [p, p]
    assert f"2 by max_length={budget}" in caplog.records[-1].getMessage()
    with pytest.raises(ValueError, match=r"sample t_all_00000: the prompt is \d+ tokens with only the current utterance"):
        format_prompt(SAMPLE, tokenizer=tok, max_length=n_tokens(tok, with_one.text) - 1)


def test_plain_prompt_system_boundary_is_a_token_boundary(bpe_tokenizer):
    tok = bpe_tokenizer
    p = format_prompt(SAMPLE, tokenizer=tok)
    n = system_token_count(p, tok)
    ids = tok(p.text)["input_ids"]
    assert n == n_tokens(tok, p.system_text) and 0 < n < len(ids)
    assert tok.decode(ids[:n]) == p.system_text and tok.decode(ids[n:]) == p.text[len(p.system_text):]


def test_chat_template_offline_tokenizer(bpe_tokenizer):
    tok = bpe_tokenizer
    p = format_prompt(SAMPLE, tokenizer=tok, use_chat_template=True)
    assert not p.add_special_tokens
    assert p.system_text == f"<s>system\n{DEFAULT_SYSTEM_PROMPT}</s>\n"
    assert p.text.startswith(p.system_text) and p.text.endswith("<s>assistant\n")
    assert "<s>user\nYour persona:" in p.text and "THE RESPONSE" not in p.text
    n = system_token_count(p, tok)
    assert tok(p.text, add_special_tokens=False)["input_ids"][:n] == tok(p.system_text, add_special_tokens=False)["input_ids"]
    # a template without a system role: the system prompt goes into the user turn, and still leads
    tok2 = type(tok)(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok2.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                          "{% endif %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}")
    q = format_prompt(SAMPLE, tokenizer=tok2, use_chat_template=True)
    assert q.system_text == f"<s>user\n{DEFAULT_SYSTEM_PROMPT}" and q.text.startswith(q.system_text)
    assert q.text[len(q.system_text):].startswith("\n\nYour persona:")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from torch_curriculum.bundled import smollm2_gguf

    try:
        path = smollm2_gguf()
    except ImportError as e:
        pytest.skip(str(e))
    pytest.importorskip("gguf")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_chat_template_real_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    p = format_prompt(SAMPLE, tokenizer=tok, use_chat_template=True, max_context_turns=3)
    expected = tok.apply_chat_template(
        [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
         {"role": "user", "content": "Your persona:\n- i like cats.\n- i am tall.\n\nDialogue:\n"
                                     "Partner: turn four\nYou: turn five\nPartner: current utterance"}],
        tokenize=False, add_generation_prompt=True)
    assert p.text == expected and p.dropped_turns == 3
    assert p.system_text == f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
    ids = tok(p.text, add_special_tokens=False)["input_ids"]
    n = system_token_count(p, tok)
    assert tok.decode(ids[:n]) == p.system_text and tok.convert_ids_to_tokens(ids[n]) == "<|im_start|>"
    plain = format_prompt(SAMPLE, tokenizer=tok)
    m = system_token_count(plain, tok)
    plain_ids = tok(plain.text)["input_ids"]
    assert tok.decode(plain_ids[:m]) == plain.system_text and tok.decode(plain_ids[m:]).startswith("Your persona:")
    budget = len(ids) - 4
    cut = format_prompt(SAMPLE, tokenizer=tok, use_chat_template=True, max_context_turns=3, max_length=budget)
    assert cut.dropped_for_length >= 1 and len(tok(cut.text, add_special_tokens=False)["input_ids"]) <= budget


# --------------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_changes_with_any_change():
    base = [SAMPLE, DialogueSample("t_all_00001", (), ("a",), "b")]
    fp = data_fingerprint(base)
    assert len(fp) == 64 and int(fp, 16) >= 0
    rebuilt = [DialogueSample(s.sample_id, tuple(s.persona), tuple(s.context), str(s.response)) for s in base]
    assert data_fingerprint(rebuilt) == fp
    variants = [
        [SAMPLE, DialogueSample("t_all_00001", (), ("a",), "c")],      # response
        [SAMPLE, DialogueSample("t_all_00009", (), ("a",), "b")],      # id
        [SAMPLE, DialogueSample("t_all_00001", ("p",), ("a",), "b")],  # persona
        [SAMPLE, DialogueSample("t_all_00001", (), ("a", ""), "b")],   # context
        base[::-1],                                                    # order
        base[:1],                                                      # count
    ]
    assert len({data_fingerprint(v) for v in variants} | {fp}) == len(variants) + 1
    # field boundaries are unambiguous: moving text between fields changes the hash
    assert data_fingerprint([DialogueSample("a", ("b",), (), "c")]) != data_fingerprint([DialogueSample("a", (), ("b",), "c")])
