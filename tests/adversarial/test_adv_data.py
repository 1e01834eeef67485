"""Issue 14 item 2 (silent misalignment of a base dataset) and item 5 (dialogue files): a base
dataset in another order, with other data, or a shuffled / filtered / other-split Hugging Face
dataset is an error naming the first mismatching index and both ids."""

from __future__ import annotations

import logging

import pytest
import torch
from _adv import small_file

from torch_curriculum.data import (
    DialogueFormatError,
    DialogueSample,
    data_fingerprint,
    read_dialogues,
)
from torch_curriculum.dataset import (
    DifficultyFileError,
    MetaTokenDifficultyDataset,
    rows_fingerprint,
)
from torch_curriculum.loragen import LoRAGenDataset
from torch_curriculum.loragen._data import LoRAGenExample

PARLAI = "".join(
    f"1 your persona: i like topic {e}.\n2 hello {e}\thi there {e}\t\tx|y\n3 how are you {e}?\tfine {e}\t\tx|y\n"
    for e in range(6))


@pytest.fixture()
def dialogues(tmp_path):
    p = tmp_path / "train_self_original.txt"
    p.write_text(PARLAI)
    samples = read_dialogues(p)
    path = tmp_path / "d.safetensors"
    small_file(path, n=len(samples), ids=[s.sample_id for s in samples])
    return samples, path


def test_reversed_dialogues_are_refused_naming_index_and_ids(dialogues):
    samples, path = dialogues
    assert MetaTokenDifficultyDataset(path, samples)[3] == samples[3]
    rev = samples[::-1]
    with pytest.raises(DifficultyFileError, match=rf"item 0 has sample_id '{rev[0].sample_id}' but the file scores "
                                                  rf"'{samples[0].sample_id}' at index 0"):
        MetaTokenDifficultyDataset(path, rev)


def test_same_length_other_data_is_refused(dialogues, tmp_path):
    samples, path = dialogues
    other = [DialogueSample(f"other_{i}", ("p",), ("c",), "r") for i in range(len(samples))]
    with pytest.raises(DifficultyFileError, match="item 0 has sample_id 'other_0'"):
        MetaTokenDifficultyDataset(path, other)
    swapped = list(samples)
    swapped[5], swapped[7] = swapped[7], swapped[5]
    with pytest.raises(DifficultyFileError, match=f"item 5 has sample_id '{samples[7].sample_id}'"):
        MetaTokenDifficultyDataset(path, swapped)


def _examples(samples):
    return [LoRAGenExample(sample_id=s.sample_id, input_ids=(1, 2, 3), labels=(-100, 2, 3), cloud_text=s.response)
            for s in samples]


def test_reordered_loragen_dataset_is_refused(dialogues):
    samples, path = dialogues
    ok = MetaTokenDifficultyDataset(path, LoRAGenDataset(_examples(samples)), return_difficulty=True)
    item, diff = ok[4]
    assert item["example"].sample_id == samples[4].sample_id and diff == float(ok.difficulty[4])
    shifted = samples[1:] + samples[:1]
    with pytest.raises(DifficultyFileError, match=f"item 0 has sample_id '{shifted[0].sample_id}'"):
        MetaTokenDifficultyDataset(path, LoRAGenDataset(_examples(shifted)))


class _Lazy(torch.utils.data.Dataset):
    """A map-style dataset whose items carry ids but which exposes no id list: checked item by item."""

    def __init__(self, samples):
        self._s = samples

    def __len__(self):
        return len(self._s)

    def __getitem__(self, i):
        return {"sample_id": self._s[i].sample_id, "text": self._s[i].response}


def test_items_fetched_one_by_one_are_checked_as_fetched(dialogues):
    samples, path = dialogues
    ds = MetaTokenDifficultyDataset(path, _Lazy(samples))
    assert [ds[i]["sample_id"] for i in range(len(ds))] == [s.sample_id for s in samples]
    swapped = list(samples)
    swapped[5], swapped[7] = swapped[7], swapped[5]
    bad = MetaTokenDifficultyDataset(path, _Lazy(swapped))  # item 0 matches, so opening succeeds
    assert bad[4]["sample_id"] == samples[4].sample_id
    with pytest.raises(DifficultyFileError, match=f"item 5 has sample_id '{samples[7].sample_id}'"):
        bad[5]


def test_data_without_ids_or_fingerprint_is_accepted_with_a_warning(dialogues, caplog):
    samples, path = dialogues
    with caplog.at_level(logging.WARNING):
        ds = MetaTokenDifficultyDataset(path, list(range(len(samples))))
    assert ds[2] == 2 and "cannot be checked" in caplog.text


def test_file_fingerprint_still_catches_same_ids_with_other_content(tmp_path):
    samples = [DialogueSample(f"x{i}", ("p",), ("c",), f"r{i}") for i in range(5)]
    path = tmp_path / "f.safetensors"
    MetaTokenDifficultyDataset.from_distances(torch.rand(5, 3), [s.sample_id for s in samples], path,
                                              fingerprint=data_fingerprint(samples))

    class Base(torch.utils.data.Dataset):
        def __init__(self, s):
            self.samples = s

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return self.samples[i].response

    edited = [*samples[:4], DialogueSample("x4", ("p",), ("c",), "edited")]
    with pytest.raises(DifficultyFileError, match="fingerprint"):
        MetaTokenDifficultyDataset(path, Base(edited))


# -------------------------------------------------------------------------- Hugging Face datasets
datasets = pytest.importorskip("datasets")


def _hf(n=20, with_id=True):
    cols = {"persona": [f"p{i}" for i in range(n)], "response": [f"r{i}" for i in range(n)]}
    if with_id:
        cols["sample_id"] = [f"row{i:03d}" for i in range(n)]
    return datasets.Dataset.from_dict(cols)


def test_hf_dataset_with_id_column(tmp_path):
    hf = _hf()
    path = tmp_path / "h.safetensors"
    small_file(path, n=len(hf), ids=list(hf["sample_id"]))
    assert MetaTokenDifficultyDataset(path, hf)[3]["response"] == "r3"
    with pytest.raises(DifficultyFileError, match=r"datasets.Dataset \(column 'sample_id'\) item 0 has sample_id"):
        MetaTokenDifficultyDataset(path, hf.shuffle(seed=0))
    with pytest.raises(DifficultyFileError, match="holds 20 samples but the base dataset has 10"):
        MetaTokenDifficultyDataset(path, hf.filter(lambda r: int(r["sample_id"][3:]) % 2 == 0))
    renamed = hf.rename_column("sample_id", "uid")
    assert len(MetaTokenDifficultyDataset(path, renamed, id_column="uid")) == 20
    with pytest.raises(DifficultyFileError, match="id_column 'nope' is not a column"):
        MetaTokenDifficultyDataset(path, renamed, id_column="nope")


def test_hf_dataset_without_ids_uses_the_recorded_row_fingerprint(tmp_path):
    hf = _hf(with_id=False)
    path = tmp_path / "h.safetensors"
    fp = rows_fingerprint(hf, ["persona", "response"])
    small_file(path, n=len(hf), inputs={"rows_fingerprint": fp, "rows_fingerprint_columns": ["persona", "response"]})
    MetaTokenDifficultyDataset(path, hf)
    MetaTokenDifficultyDataset(path, hf.add_column("extra", list(range(20))))  # an added column is fine
    for bad in (hf.shuffle(seed=1), hf.select([*range(19), 0]),
                datasets.Dataset.from_dict({"persona": [f"p{i}" for i in range(20)],
                                            "response": [f"r{i}" for i in range(19)] + ["changed"]})):
        with pytest.raises(DifficultyFileError, match="rows of the base datasets.Dataset differ"):
            MetaTokenDifficultyDataset(path, bad)
    with pytest.raises(DifficultyFileError, match="lacks a column"):
        MetaTokenDifficultyDataset(path, hf.remove_columns("persona"))


def test_hf_dataset_that_cannot_be_checked_is_an_error(tmp_path):
    hf = _hf(with_id=False)
    path = tmp_path / "h.safetensors"
    small_file(path, n=len(hf))
    with pytest.raises(DifficultyFileError, match="cannot check.*pass id_column="):
        MetaTokenDifficultyDataset(path, hf)


def test_rows_fingerprint_matches_for_plain_rows():
    rows = [{"a": 1, "b": "x"}, {"b": "y", "a": 2}]
    assert rows_fingerprint(rows) == rows_fingerprint(datasets.Dataset.from_list(rows))
    assert rows_fingerprint(rows) != rows_fingerprint(rows[::-1])
    with pytest.raises(KeyError, match="column"):
        rows_fingerprint(rows, ["c"])


# -------------------------------------------------------------------------- dialogue files (item 5)
CSV_HEADER = "user 1 personas,user 2 personas,Best Generated Conversation\n"
CSV_ROW = '"i like cats.","i like dogs.","User 1: hi\nUser 2: hello\nUser 1: how are you"\n'


@pytest.mark.parametrize(("name", "text"), [("spc_train.csv", CSV_HEADER + CSV_ROW),
                                            ("train_self_original.txt", PARLAI)])
def test_bom_is_dropped(tmp_path, name, text):
    plain, bom = tmp_path / name, tmp_path / ("bom_" + name)
    plain.write_text(text, encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_dialogues(bom, source="x", split="train") == read_dialogues(plain, source="x", split="train")


def test_bom_without_known_suffix_is_detected(tmp_path):
    p = tmp_path / "dialogues"
    p.write_bytes(b"\xef\xbb\xbf" + PARLAI.encode())
    assert len(read_dialogues(p)) == 12


@pytest.mark.parametrize("name", ["train_self_original.txt", "spc.csv", "d.jsonl", "persona.json"])
def test_invalid_utf8_names_line_and_byte(tmp_path, name):
    good = {"train_self_original.txt": PARLAI, "spc.csv": CSV_HEADER + CSV_ROW,
            "d.jsonl": '{"persona": ["a"], "context": ["b"], "response": "c"}\n' * 3,
            "persona.json": '{"train": [{"personality": ["a"], "utterances": [{"history": ["h"], '
                            '"candidates": ["x", "y"]}]}]}'}[name].encode()
    lines = good.split(b"\n")
    target = min(1, len(lines) - 1)
    lines[target] = lines[target][:5] + b"\xff" + lines[target][5:]
    data = b"\n".join(lines)
    (tmp_path / name).write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(DialogueFormatError, match=rf"{name}, line {target + 1}, byte offset {offset}: is not UTF-8"):
        read_dialogues(tmp_path / name)


def test_utf16_file_says_so(tmp_path):
    (tmp_path / "d.txt").write_bytes(PARLAI.encode("utf-16"))
    with pytest.raises(DialogueFormatError, match="UTF-16 byte-order mark"):
        read_dialogues(tmp_path / "d.txt")


def test_directory_is_not_reported_missing(tmp_path):
    (tmp_path / "data.txt").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_dialogues(tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dialogues(tmp_path / "missing.txt")
