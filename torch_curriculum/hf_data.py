"""Hugging Face ``datasets`` as input: rows with persona / context / response columns -> ``DialogueSample``.

Three ways in, all giving the same :class:`~torch_curriculum.data.DialogueSample` list that
:func:`torch_curriculum.precompute.precompute` scores:

* :func:`samples_from_hf`: a ``datasets.Dataset`` (or any sequence of row dicts) and a column
  mapping, or a user function ``row -> DialogueSample``;
* :func:`load_hf_dataset`: a folder saved with ``Dataset.save_to_disk`` (``load_from_disk``), a
  ``.parquet`` file, or a JSON-lines / JSON file of rows;
* :class:`HFDialogueDataset`: wraps a ``datasets.Dataset`` for training. It exposes ``samples`` and
  ``fingerprint()``, so ``MetaTokenDifficultyDataset(path, base_dataset=HFDialogueDataset(ds, ...))``
  checks that the rows are the ones scored: a shuffled, filtered or other split is an error, not a
  silent misalignment (a bare ``datasets.Dataset`` carries no such content fingerprint).

Column values: ``persona`` a list of sentences or one string (one sentence; may be empty), ``context``
a list of turns (oldest first, the last one answered) or one string, ``response`` a string. A missing
column is an error that names it and lists the dataset's columns; a row whose context or response is
missing or empty is an error that names the row. Ids: the ``id_column`` (str or int, unique) or
``{source}_{row:06d}``.

Needs the ``[hf]`` extra (``pip install 'torch_curriculum[hf]'``).

Example:
    >>> import datasets                                                             # doctest: +SKIP
    >>> ds = datasets.Dataset.from_dict({"persona": [["i like tea"]], "context": [["hi"]],
    ...                                  "response": ["hello"]})                    # doctest: +SKIP
    >>> samples_from_hf(ds)[0].response                                             # doctest: +SKIP
    'hello'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .data import DialogueFormatError, DialogueSample, data_fingerprint

__all__ = ["HFDialogueDataset", "load_hf_dataset", "samples_from_hf"]


def load_hf_dataset(path: str | Path, *, split: str | None = None) -> Any:
    """Open a Hugging Face dataset from disk.

    Args:
        path (str | Path): a ``save_to_disk`` folder, a ``.parquet`` file, or a ``.jsonl`` / ``.json``
            file of row objects.
        split (str | None): the split of a saved ``DatasetDict`` (required when it has several).

    Returns:
        datasets.Dataset: the rows.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DialogueFormatError: not a dataset folder, an unknown suffix, an unknown or missing split, or
            a file ``datasets`` cannot parse (the message names the file).
        ImportError: ``datasets`` is not installed (names the ``[hf]`` extra).
    """
    from ._optional import require

    datasets = require("datasets", "hf", "Hugging Face dataset input")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    try:
        if p.is_dir():
            try:
                ds = datasets.load_from_disk(str(p))
            except FileNotFoundError:
                raise DialogueFormatError(p, None, "not a dataset folder saved with save_to_disk "
                                          "(no dataset_info.json / dataset_dict.json)") from None
            if isinstance(ds, datasets.DatasetDict):
                names = list(ds.keys())
                if split is None and len(names) == 1:
                    split = names[0]
                if split is None:
                    raise DialogueFormatError(p, None, f"a DatasetDict with splits {names}; choose one (--split)")
                if split not in ds:
                    raise DialogueFormatError(p, None, f"no split {split!r}; the splits are {names}")
                ds = ds[split]
            elif split is not None and split != str(getattr(ds, "split", split)):
                raise DialogueFormatError(p, None, f"a single Dataset (split {ds.split!r}), not split {split!r}")
            return ds
        suffix = p.suffix.lower()
        kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(suffix)
        if kind is None:
            raise DialogueFormatError(p, None, f"unknown Hugging Face data file type {suffix!r}; expected a "
                                      "save_to_disk folder, .parquet, .jsonl or .json")
        from datasets.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        quiet = are_progress_bars_disabled()
        disable_progress_bars()  # a "Generating train split" bar is noise for a local file
        try:
            return datasets.load_dataset(kind, data_files=str(p), split="train")
        finally:
            if not quiet:
                enable_progress_bars()
    except DialogueFormatError:
        raise
    except (ValueError, OSError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DialogueFormatError(p, None, f"cannot read it as a Hugging Face dataset ({msg})") from None
    except Exception as e:  # datasets / pyarrow raise their own error types for unparsable files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DialogueFormatError(p, None, f"cannot read it as a Hugging Face dataset ({type(e).__name__}: "
                                  f"{msg})") from None


def _texts(value: Any, name: str, row: int, column: str, *, allow_empty: bool) -> tuple[str, ...]:
    if value is None:
        raise DialogueFormatError(name, f"row {row}", f"column {column!r} is missing (null)")
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise DialogueFormatError(name, f"row {row}", f"column {column!r} must be a string or a list of strings, got "
                                  f"{type(value).__name__}")
    items = tuple(t.strip() for t in items if t.strip())
    if not items and not allow_empty:
        raise DialogueFormatError(name, f"row {row}", f"column {column!r} is empty")
    return items


def samples_from_hf(
    dataset: Any,
    *,
    persona_column: str = "persona",
    context_column: str = "context",
    response_column: str = "response",
    id_column: str | None = None,
    row_to_sample: Callable[[Mapping[str, Any], int], DialogueSample] | None = None,
    source: str = "hf",
    max_samples: int | None = None,
    name: str = "dataset",
) -> list[DialogueSample]:
    """Turn the rows of a Hugging Face dataset into ``DialogueSample``s.

    Args:
        dataset: a ``datasets.Dataset`` or any sequence of row mappings.
        persona_column (str): persona sentences (list or one string; may be empty). Defaults to ``persona``.
        context_column (str): earlier turns, oldest first (list or one string). Defaults to ``context``.
        response_column (str): the response. Defaults to ``response``.
        id_column (str | None): sample ids (unique); None = ``{source}_{row:06d}``.
        row_to_sample (Callable | None): ``f(row, index) -> DialogueSample``, replacing the column mapping.
        source (str): prefix of generated ids. Defaults to ``hf``.
        max_samples (int | None): the first N rows only.
        name (str): how errors name the data set (e.g. its path). Defaults to ``dataset``.

    Returns:
        list[DialogueSample]: one per row, in row order.

    Raises:
        DialogueFormatError: a missing column (named, with the available ones), a null/empty context or
            response (the row is named), a wrong value type, a duplicate or empty id, or a
            ``row_to_sample`` that does not return a DialogueSample.
    """
    names = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
    if row_to_sample is None:
        wanted = {"--persona-column": persona_column, "--context-column": context_column,
                  "--response-column": response_column}
        if id_column is not None:
            wanted["--id-column"] = id_column
        for flag, col in wanted.items():
            if col not in names:
                raise DialogueFormatError(name, None, f"no column {col!r} ({flag}); the columns are {names}")
    n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
    out: list[DialogueSample] = []
    seen: dict[str, int] = {}
    rows = dataset.select(range(n)) if hasattr(dataset, "select") else dataset[:n]
    for i, row in enumerate(rows):
        if row_to_sample is not None:
            s = row_to_sample(row, i)
            if not isinstance(s, DialogueSample):
                raise DialogueFormatError(name, f"row {i}", f"row_to_sample returned {type(s).__name__}, not a DialogueSample")
        else:
            if id_column is not None:
                raw_id = row[id_column]
                if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                    raise DialogueFormatError(name, f"row {i}", f"column {id_column!r} (id) is empty")
                sid = str(raw_id)
            else:
                sid = f"{source}_{i:06d}"
            s = DialogueSample(sid, _texts(row[persona_column], name, i, persona_column, allow_empty=True),
                               _texts(row[context_column], name, i, context_column, allow_empty=False),
                               " ".join(_texts(row[response_column], name, i, response_column, allow_empty=False)))
        if s.sample_id in seen:
            raise DialogueFormatError(name, f"row {i}", f"duplicate sample id {s.sample_id!r} (also row {seen[s.sample_id]})")
        seen[s.sample_id] = i
        out.append(s)
    return out


class HFDialogueDataset:
    """A ``datasets.Dataset`` as a training data set that a difficulty file can check.

    Args:
        dataset: the ``datasets.Dataset`` (rows are returned as they are by ``__getitem__``).
        **columns: the keyword arguments of :func:`samples_from_hf` (column mapping, ids, function).

    Attributes:
        samples (list[DialogueSample]): the rows as samples (what precompute scores).

    Example:
        >>> base = HFDialogueDataset(hf_ds, id_column="id")                            # doctest: +SKIP
        >>> MetaTokenDifficultyDataset("d.safetensors", base_dataset=base)             # doctest: +SKIP
    """

    def __init__(self, dataset: Any, **columns: Any):
        self.dataset = dataset
        self.samples: Sequence[DialogueSample] = samples_from_hf(dataset, **columns)

    def fingerprint(self) -> str:
        """The content fingerprint of the rows, equal to the one precompute stores for them."""
        return data_fingerprint(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]
