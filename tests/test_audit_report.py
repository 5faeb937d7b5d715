"""The audit's HTML report renders in headless Chromium: a screenshot is taken and the rendered
page has the expected sections, images and figures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sg3archive.audit.record import audit_and_record
from sg3archive.pipeline.compress import compress
from sg3archive.pipeline.jobs import CompressJob

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "out" / "audit-report"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path, lpips_weights_dir, monkeypatch) -> None:
    monkeypatch.setenv("SG3ARCHIVE_LPIPS_WEIGHTS", str(lpips_weights_dir))  # LPIPS measured too
    src = tmp_path / "src"
    shutil.copytree(SAMPLES, src)
    archive = tmp_path / "archive"
    compress(CompressJob(source=str(src), destination=str(archive), device="cpu", shard_size=5,
                         calibration_images=4), progress=False)
    audit_and_record(str(archive), sample_size=10, seed=1, device="cpu")  # an earlier night, for the trend
    report = tmp_path / "report.html"
    result, _, _ = audit_and_record(str(archive), sample_size=10, seed=2, device="cpu", report=str(report))
    assert result.passed, result.problems
    profile = tmp_path / "chromium-profile"
    url = report.resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    for heading in ("Audit", "Thresholds", "Problems", "Worst reconstructions", "Distributions", "Trend"):
        assert heading in dom
    assert dom.count("<img") == 3 * 8 and dom.count("<svg") == 6  # 8 worst rows x 3; 5 histograms + trend
    assert "lpips: n 10" in dom and result.stats["lpips"].n == 10
    assert "PASSED" in dom and "over 2 audits" in dom
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1100,2400",
                    url], capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1100)
    colourful = (img.max(axis=2).astype(int) - img.min(axis=2)) > 40  # thumbnails and bars are saturated
    assert colourful.mean() > 0.005, "the screenshot shows no rendered images"
