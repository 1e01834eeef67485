"""Write docs/results.md (the measured verdicts) from the committed results directories.

Run: ``python benchmarks/results_page.py`` (after ``torch-curriculum report`` on each directory).
The plots the page shows are copied into ``docs/assets/results/<preset>/`` (the page may link nothing
outside ``docs/``: ``mkdocs build --strict`` rejects it); report.md files are named as code paths.
"""
from pathlib import Path

from torch_curriculum.experiments.report import results_page

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = [
    ("Positive control: `noisy` preset", ROOT / "benchmarks/results/noisy"),
    ("Clean setting, short budget: `cpu` preset", ROOT / "benchmarks/results/cpu/short"),
    ("Clean setting, long budget: `cpu` preset", ROOT / "benchmarks/results/cpu/long"),
    ("Old design (3 seeds, 160 samples, 40 steps; kept for reference)", ROOT / "benchmarks/results/cpu_v1"),
]

if __name__ == "__main__":
    page = ROOT / "docs" / "results.md"
    text = results_page(ENTRIES, page_dir=page.parent, assets_dir=ROOT / "docs/assets/results",
                        results_root=ROOT / "benchmarks/results", repo_root=ROOT)
    page.write_text(text, encoding="utf-8")
    print(page)
