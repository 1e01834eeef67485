"""Write docs/results.md (the measured verdicts) from the committed results directories.

Run: ``python benchmarks/results_page.py`` (after ``torch-curriculum report`` on each directory).
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
    page.write_text(results_page(ENTRIES, page_dir=page.parent), encoding="utf-8")
    print(page)
