"""The HF integration on the lowest transformers / accelerate / peft that setup.cfg admits.

Builds (once; cached) a separate virtual environment ``.venv-floor/`` at the repository root with
the same torch as this one and exactly the floor versions read from ``setup.cfg``'s
``install_requires`` (``transformers>=X`` installs ``transformers==X``), then runs the Trainer
integration tests in it against this checkout. Building takes a few minutes the first time (the
torch wheel comes from the local wheel directory pip is configured with, the rest from the package
index); later runs reuse the environment while the pins are unchanged.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.floor

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-floor"
FLOOR_PACKAGES = ("transformers", "accelerate", "peft")
# what runs in the floor environment: the Trainer integration (exact resume, pacing, layer masks)
FLOOR_TESTS = ("tests/test_hf_resume.py", "tests/test_hf_loader.py", "tests/test_callbacks.py",
               "tests/test_layer_mask_policies.py")


def floor_pins() -> list[str]:
    """``name==X`` for every ``name>=X`` of FLOOR_PACKAGES in setup.cfg's install_requires."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    pins = {}
    for line in cfg["options"]["install_requires"].splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?", line)
        if m and m.group(1).lower() in FLOOR_PACKAGES:
            pins[m.group(1).lower()] = f"{m.group(1).lower()}=={m.group(2)}"
    missing = [p for p in FLOOR_PACKAGES if p not in pins]
    assert not missing, f"setup.cfg install_requires has no '>=' floor for {missing}"
    return [pins[p] for p in FLOOR_PACKAGES]


def _run(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _build(pins: list[str]) -> Path:
    import torch

    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    spec = [torch_pin, *pins, "pytest>=8", "numpy", "safetensors", "scipy"]
    stamp = VENV / f".installed-{hashlib.sha256(' '.join(spec).encode()).hexdigest()[:16]}"
    python = VENV / "bin" / "python"
    if stamp.exists() and python.exists():
        return python
    if VENV.exists():
        shutil.rmtree(VENV)
    base = getattr(sys, "_base_executable", None) or sys.executable
    res = _run([base, "-m", "venv", str(VENV)], timeout=300)
    assert res.returncode == 0, f"creating {VENV} failed:\n{res.stdout}\n{res.stderr}"
    # torch first and alone: the later installs then keep it instead of pulling CUDA wheels
    for group in ([torch_pin], spec[1:]):
        res = _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *group], timeout=1500)
        assert res.returncode == 0, f"pip install {group} into {VENV} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    stamp.write_text(" ".join(spec) + "\n", encoding="utf-8")
    return python


def test_setup_cfg_pins_a_floor_for_the_hf_stack():
    pins = floor_pins()
    assert [p.split("==")[0] for p in pins] == list(FLOOR_PACKAGES)


def test_integration_tests_pass_on_the_floor_versions():
    pins = floor_pins()
    python = _build(pins)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT)
    versions = _run([str(python), "-c", "import transformers, accelerate, peft, torch; print("
                     "transformers.__version__, accelerate.__version__, peft.__version__, torch.__version__)"],
                    timeout=300, env=env, cwd=ROOT)
    assert versions.returncode == 0, versions.stderr
    from packaging.version import Version

    got = versions.stdout.split()
    assert [Version(v) for v in got[:3]] == [Version(p.split("==")[1]) for p in pins], (got, pins)
    res = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not floor",
                *FLOOR_TESTS], timeout=1800, env=env, cwd=ROOT)
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, f"integration tests failed on {got}:\n{tail}"
    assert re.search(r"\b\d+ passed\b", res.stdout) and " failed" not in res.stdout, tail
