"""benchmarks/rd_latent.py and benchmarks/rate_training.py run end to end at their smallest
settings and print their tables (so the scripts behind the README's figures never rot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SG3ARCHIVE_LPIPS_DOWNLOAD": "0"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_rd_latent_quick_run_compares_the_curves(tmp_path) -> None:
    out = tmp_path / "rd_latent.md"
    res = _run(str(REPO / "benchmarks" / "rd_latent.py"), "--quick", "--sets", "t64", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert "### set t64" in text
    rows = re.findall(r"^\| (150|300|600) \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \|", text, flags=re.M)
    assert [r[0] for r in rows] == ["150", "300", "600"]
    for _, today, rd, gain in rows:
        assert abs(float(rd) - float(today) - float(gain)) < 0.011
    assert "| rd | 3 bits, refine 5" in text and "encode s/image" in text


def test_rate_training_smoke_run_prints_its_table() -> None:
    res = _run(str(REPO / "benchmarks" / "rate_training.py"), "--steps", "1", "--weights", "0.03")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("| rate_weight")]
    assert [line.split("|")[1].strip() for line in lines] == ["rate_weight 0", "rate_weight 0.03"]
    assert lines[0].count("1.00x") == 3  # the baseline is its own reference
