"""The seed's experiments as an installed, user-runnable harness.

``torch-curriculum experiment --config PRESET|FILE.yaml [--out DIR] [--shard i/n]`` trains the
reference LoRA-Gen generator under every curriculum strategy and control over seeds, and
``torch-curriculum report DIR`` turns what the runs wrote into ``results.json``, ``report.md`` and
plots. The modules:

* :mod:`~torch_curriculum.experiments.runner`: presets (``presets/*.yaml``), data, models, the runs;
* :mod:`~torch_curriculum.experiments.results`: ``results.json`` (H1/H2/H3, MDE, positive control);
* :mod:`~torch_curriculum.experiments.report`: Markdown report and plots from a results directory;
* :mod:`~torch_curriculum.experiments.metrics`: the statistics (steps-to-target, CIs, tests, MDE);
* :mod:`~torch_curriculum.experiments.signals`: cheap per-sample signals (length, edge loss, IFD).

Example:
    >>> from torch_curriculum.experiments import preset_names
    >>> "cpu" in preset_names()
    True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRESETS_DIR", "preset_names", "preset_path"]

#: folder of the presets shipped with the package
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets (``cpu``, ``noisy``, ``smoke``, ...).

    Returns:
        list[str]: sorted preset names (file stems under :data:`PRESETS_DIR`).
    """
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name_or_file: str | Path) -> Path:
    """A shipped preset's path by name, or the given YAML file.

    Args:
        name_or_file (str | Path): ``"cpu"`` (a shipped preset) or a path to a ``.yaml`` file.

    Returns:
        Path: the YAML file.

    Raises:
        FileNotFoundError: neither a shipped preset nor an existing file (the message lists the presets).
    """
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"preset file {p} does not exist")
        return p
    q = PRESETS_DIR / f"{name_or_file}.yaml"
    if not q.is_file():
        raise FileNotFoundError(f"no preset named {name_or_file!r}; shipped presets: {', '.join(preset_names())} "
                                f"(or give a path to a .yaml file)")
    return q
