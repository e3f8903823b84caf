"""The benchmark harness in its quickest mode, on the image_features scenarios only: it must
run both modes, and write a RESULTS-style table (to a temporary path, never over
benchmarks/RESULTS.md) within a CI-friendly time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_image_features_run_writes_a_results_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--rounds", "1",
         "--only", "image", "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 60
    # Progress: one line per scenario, round and mode.
    progress = [line for line in proc.stdout.splitlines() if " · round 1/1 · " in line]
    assert len(progress) == 4, proc.stdout
    text = out.read_text()
    assert "| scenario | # invocations | baseline ms | Trapeze ms | overhead % |" in text
    for name in ("Image features: Upload", "Image features: Extract"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "1", row                     # one invocation per request
        assert float(cells[2]) > 0 and float(cells[3]) > 0, row
        float(cells[4])                                  # an overhead, not "—"
        assert cells[8] == "0", row                      # no function line changed
    assert "Image features: Upload: identical" in text   # transparency
    assert "Hello Retail" not in text.split("## Overhead table")[1].split("Columns.")[0]
    assert f"results written to {out}" in proc.stdout   # --out, not benchmarks/RESULTS.md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "overhead.png").stat().st_size > 1000
