"""The documentation cannot rot: its code runs, its site builds strictly.

* Every fenced ```python block of ``README.md`` and ``docs/**/*.md`` is executed: the blocks of one
  page in order, in one namespace, in a fresh temporary working directory. A block that cannot run
  in the tests is preceded (on the line just before its fence) by ``<!-- skip: reason -->``; the
  reason is required. A page whose executed code loads the bundled real models or data
  (``torch_curriculum.bundled``) is marked ``integration``. The terminal summary says how many
  blocks ran.
* ``mkdocs build --strict`` passes: no broken link or anchor, no nav entry without a file, no public
  name without a docstring, no docstring ``Args`` naming a parameter the signature lacks (see
  ``docs/gen_ref.py``).
* The README's relative links point at files that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
_SKIP = re.compile(r"^\s*<!--\s*skip\b(?P<rest>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    skip_reason: str | None


class DocsFormatError(ValueError):
    """A page's code blocks break the convention (unclosed fence, skip marker without reason...)."""


def parse_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their skip markers.

    Raises:
        DocsFormatError: an unclosed fence, a skip marker without a reason, or a skip marker that is
            not directly followed by a code fence.
    """
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    pending: tuple[int, str] | None = None  # (line, reason) of a skip marker waiting for its fence
    while i < len(lines):
        line = lines[i]
        m_skip = _SKIP.match(line)
        if m_skip:
            rest = m_skip.group("rest").strip()
            if not rest.startswith(":") or not rest[1:].strip():
                raise DocsFormatError(f"{path}:{i + 1}: a skip marker needs a reason: <!-- skip: why -->")
            pending = (i + 1, rest[1:].strip())
            i += 1
            continue
        m = _FENCE.match(line)
        if not m:
            if pending is not None and line.strip():
                raise DocsFormatError(f"{path}:{pending[0]}: a skip marker must be on the line just "
                                      "before a code fence")
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        start = i + 1
        j = start
        while j < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise DocsFormatError(f"{path}:{i + 1}: code fence {fence!r} is never closed")
        code = "\n".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[start:j])
        blocks.append(Block(path, start + 1, m.group("info").lower(), code,
                            pending[1] if pending is not None else None))
        pending = None
        i = j + 1
    if pending is not None:
        raise DocsFormatError(f"{path}:{pending[0]}: a skip marker must be on the line just before a code fence")
    return blocks


def doc_pages() -> list[Path]:
    """README.md and every Markdown page of the docs site (sources, not generated pages)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _python_blocks(path: Path) -> list[Block]:
    return [b for b in parse_blocks(path) if b.lang in ("python", "py")]


def _uses_bundled(blocks: list[Block]) -> bool:
    return any("torch_curriculum.bundled" in b.code for b in blocks if b.skip_reason is None)


def _page_params():
    params = []
    for page in doc_pages():
        blocks = _python_blocks(page)
        if not blocks:
            continue
        marks = [pytest.mark.integration] if _uses_bundled(blocks) else []
        params.append(pytest.param(page, id=str(page.relative_to(ROOT)), marks=marks))
    return params


class _Tally:
    """Counts executed/skipped blocks and prints them in pytest's terminal summary."""

    def __init__(self):
        self.executed: dict[str, int] = {}
        self.skipped: list[str] = []

    def pytest_terminal_summary(self, terminalreporter):
        if not self.executed and not self.skipped:
            return
        terminalreporter.write_sep("-", "documentation code blocks")
        terminalreporter.write_line(f"executed {sum(self.executed.values())} python blocks from "
                                    f"{len(self.executed)} pages; skipped {len(self.skipped)}")
        for page, n in sorted(self.executed.items()):
            terminalreporter.write_line(f"  {n:3d}  {page}")
        for s in self.skipped:
            terminalreporter.write_line(f"  skip {s}")


@pytest.fixture(scope="module")
def tally(request):
    plugin = _Tally()
    request.config.pluginmanager.register(plugin, "torch_curriculum_docs_tally")
    yield plugin


@pytest.mark.parametrize("page", _page_params())
def test_page_code_runs(page: Path, tmp_path, monkeypatch, tally):
    """Every ```python block of the page runs, in order, in one namespace, in a temp dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    rel = str(page.relative_to(ROOT))
    ran = 0
    for block in _python_blocks(page):
        if block.skip_reason is not None:
            tally.skipped.append(f"{rel}:{block.line}: {block.skip_reason}")
            continue
        # padded so that tracebacks point at the Markdown file's own line numbers
        code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
        exec(code, namespace)
        ran += 1
    tally.executed[rel] = ran


def test_every_page_follows_the_block_convention():
    """All pages parse (closed fences, skip markers with reasons) and the docs have runnable code."""
    n_run = 0
    for page in doc_pages():
        for b in _python_blocks(page):
            n_run += b.skip_reason is None
    assert n_run >= 20, f"only {n_run} runnable python blocks in README + docs"


@pytest.mark.parametrize("text, error", [
    ("<!-- skip -->\n```python\nx = 1\n```\n", "needs a reason"),
    ("<!-- skip:   -->\n```python\nx = 1\n```\n", "needs a reason"),
    ("<!-- skip: slow -->\n\nsome text\n```python\nx = 1\n```\n", "just before a code fence"),
    ("```python\nx = 1\n", "never closed"),
    ("text\n<!-- skip: dangling -->\n", "just before a code fence"),
])
def test_block_parser_rejects_bad_pages(text, error):
    with pytest.raises(DocsFormatError, match=error):
        parse_blocks(Path("page.md"), text)


def test_block_parser_reads_blocks_and_markers():
    text = ("# t\n\n```python\na = 1\n```\n\n<!-- skip: needs a GPU -->\n```python\nb = 2\n```\n"
            "````markdown\n```python\nnot a block\n```\n````\n  ```py\n  c = 3\n  ```\n```bash\nls\n```\n")
    blocks = parse_blocks(Path("p.md"), text)
    assert [(b.lang, b.line, b.code, b.skip_reason) for b in blocks] == [
        ("python", 4, "a = 1", None),
        ("python", 9, "b = 2", "needs a GPU"),
        ("markdown", 12, "```python\nnot a block\n```", None),
        ("py", 17, "c = 3", None),
        ("bash", 20, "ls", None),
    ]


def test_failing_block_points_at_its_markdown_line(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# p\n\n```python\nx = 1\ny = x / 0\n```\n")
    (block,) = _python_blocks(page)
    with pytest.raises(ZeroDivisionError) as info:
        exec(compile("\n" * (block.line - 1) + block.code, str(page), "exec"), {})
    assert info.traceback[-1].lineno + 1 == 5 and str(info.traceback[-1].path) == str(page)


def test_docstring_dialect_becomes_markdown():
    """docs/griffe_ext.py: Sphinx roles become inline code, ``Example:`` the Google examples section."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_ext", ROOT / "docs" / "griffe_ext.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    text = "Like :class:`~torch_curriculum.samplers.HybridSampler` and :func:`.percentiles`.\n\n    Example:\n"
    assert ext.markdown_docstring(text) == "Like `HybridSampler` and `percentiles`.\n\n    Examples:\n"
    assert ext.markdown_docstring(":meth:`update` (``x``)") == "`update` (``x``)"


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)|!\[[^\]]*\]\((?P<img>[^)\s]+)\)")


def test_readme_links_resolve():
    """Relative links and images in README.md point at files of the repository."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    bad, checked = [], 0
    for m in _LINK.finditer(text):
        target = (m.group("target") or m.group("img")).split("#", 1)[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        checked += 1
        if not (ROOT / target).exists():
            bad.append(target)
    assert checked >= 5, "the README should link into the docs"
    assert not bad, f"README.md links to missing files: {bad}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict: any warning (broken link, missing docstring ...) fails it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and "No module named mkdocs" in log:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make setup does)")
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln or "Error" in ln)
    # the generated reference is there and renders the public API from the docstrings
    index = (site / "reference" / "index.html").read_text(encoding="utf-8")
    assert "LayerWiseProgressiveSampler" in index and "layer_distances" in index
    samplers = (site / "reference" / "torch_curriculum.samplers.html").read_text(encoding="utf-8")
    for member in ("set_epoch", "update", "state_dict", "load_state_dict", "stage", "pool_size"):
        # inherited from the private engine class, still documented on every public sampler
        assert f'id="torch_curriculum.samplers.EasyToHardSampler.{member}"' in samplers, member
    assert (site / "reference" / "cli.html").exists()
