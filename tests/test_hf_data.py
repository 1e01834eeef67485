"""hf_data: Hugging Face datasets rows -> DialogueSample, with errors that name the row and column."""

from __future__ import annotations

import datasets
import pytest

from torch_curriculum.data import DialogueFormatError, DialogueSample, data_fingerprint
from torch_curriculum.hf_data import HFDialogueDataset, load_hf_dataset, samples_from_hf

ROWS = [{"id": 7, "persona": ["i like tea", " "], "context": "hello there", "response": ["fine", "thanks"]},
        {"id": 8, "persona": "i run", "context": ["hi", "how are you"], "response": "great"},
        {"id": 9, "persona": [], "context": ["yo"], "response": "hey"}]


# an Arrow column has one type: Dataset rows use lists throughout; plain row dicts may mix
LISTS = [{"id": 7, "persona": ["i like tea", " "], "context": ["hello there"], "response": "fine thanks"},
         {"id": 8, "persona": ["i run"], "context": ["hi", "how are you"], "response": "great"},
         {"id": 9, "persona": [], "context": ["yo"], "response": "hey"}]


def test_rows_to_samples_with_string_and_list_values():
    assert samples_from_hf(datasets.Dataset.from_list(LISTS), id_column="id") == \
        samples_from_hf(ROWS, id_column="id")
    got = samples_from_hf(ROWS, id_column="id")
    assert got == [DialogueSample("7", ("i like tea",), ("hello there",), "fine thanks"),
                   DialogueSample("8", ("i run",), ("hi", "how are you"), "great"),
                   DialogueSample("9", (), ("yo",), "hey")]
    assert [s.sample_id for s in samples_from_hf(ROWS, source="x")] == ["x_000000", "x_000001", "x_000002"]
    assert len(samples_from_hf(ROWS, max_samples=2)) == 2


@pytest.mark.parametrize("rows, kw, message", [
    (LISTS, {"response_column": "answer"}, r"no column 'answer' \(--response-column\); the columns are \['id'"),
    ([*LISTS[:1], {**LISTS[1], "context": None}], {}, r"row 1: column 'context' is missing \(null\)"),
    ([*LISTS[:2], {**LISTS[2], "response": "  "}], {}, r"row 2: column 'response' is empty"),
    ([LISTS[0], {**LISTS[1], "id": 7}], {"id_column": "id"}, r"row 1: duplicate sample id '7' \(also row 0\)"),
    ([*LISTS[:1], {**LISTS[1], "context": []}], {}, r"row 1: column 'context' is empty"),
])
def test_bad_rows_name_row_and_column(rows, kw, message):
    with pytest.raises(DialogueFormatError, match="my.parquet[,:] " + message):
        samples_from_hf(datasets.Dataset.from_list(rows), name="my.parquet", **kw)
    with pytest.raises(DialogueFormatError, match=r"row 0: column 'persona' must be a string or a list of strings"):
        samples_from_hf([{**ROWS[0], "persona": 3}])


def test_load_folder_parquet_jsonl_and_wrapper(tmp_path):
    ds = datasets.Dataset.from_list(LISTS[1:])
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "dd"))
    ds.to_parquet(str(tmp_path / "r.parquet"))
    ds.to_json(str(tmp_path / "r.jsonl"))
    assert len(load_hf_dataset(tmp_path / "dd", split="test")) == 1
    with pytest.raises(DialogueFormatError, match=r"splits \['train', 'test'\]; choose one"):
        load_hf_dataset(tmp_path / "dd")
    with pytest.raises(DialogueFormatError, match="no split 'valid'"):
        load_hf_dataset(tmp_path / "dd", split="valid")
    for p in ("r.parquet", "r.jsonl"):
        assert samples_from_hf(load_hf_dataset(tmp_path / p)) == samples_from_hf(ds)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DialogueFormatError, match="bad.parquet: cannot read it as a Hugging Face dataset"):
        load_hf_dataset(tmp_path / "bad.parquet")
    with pytest.raises(DialogueFormatError, match="unknown Hugging Face data file type '.csv'"):
        (tmp_path / "x.csv").write_text("a\n")
        load_hf_dataset(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DialogueFormatError, match="not a dataset folder"):
        load_hf_dataset(tmp_path / "empty")
    base = HFDialogueDataset(ds)
    assert len(base) == 2 and base[1]["response"] == "hey" and base.fingerprint() == data_fingerprint(base.samples)
