"""The audit's HTML report renders in headless Chromium: a screenshot is taken and the rendered
page has the expected sections, images and figures, with the verdict's thresholds, labelled
chart axes, bar counts and dated trend points."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from small_archives import LATENT_ONLY

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
    shutil.copytree(SAMPLES, src, ignore=shutil.ignore_patterns("photos"))  # the latent-sized samples
    archive = tmp_path / "archive"
    compress(CompressJob(source=str(src), destination=str(archive), device="cpu", shard_size=5,
                         calibration_images=4, **LATENT_ONLY), progress=False)
    audit_and_record(str(archive), sample_size=10, seed=1, device="cpu")  # an earlier night, for the trend
    report = tmp_path / "report.html"
    result, _, _ = audit_and_record(str(archive), sample_size=10, seed=2, device="cpu", report=str(report))
    assert result.passed, result.problems
    profile = tmp_path / "chromium-profile"
    url = report.resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    for heading in ("Audit", "Thresholds", "Problems", "Sources not verified", "Worst reconstructions",
                    "Distributions", "Trend"):
        assert heading in dom
    assert dom.count("<img") == 3 * 8 and dom.count("<svg") == 6  # 8 worst rows x 3; 5 histograms + trend
    assert "LPIPS vs source (0 = identical): n 10 images" in dom and result.stats["lpips"].n == 10
    assert "PASSED</strong> against the thresholds: PSNR drop ≤ 0.5 dB vs encode time" in dom
    assert "<td>not checked</td>" in dom and "<td>None</td>" not in dom
    assert "Measured quality: mean PSNR" in dom and "over 2 audits" in dom
    # every histogram: an x-axis title with its unit, x ticks, y ticks and the y title, counts on the bars
    for title in ("PSNR vs source (dB)", "MS-SSIM vs source (1 = identical)", "PSNR drop vs encode time (dB)",
                  "8×8 thumbnail difference (levels of 255)", "LPIPS vs source (0 = identical)"):
        assert re.search(rf'class="xlabel"[^>]*>{re.escape(title)}</text>', dom), title
    assert dom.count('class="ylabel"') == 6 and dom.count(">images</text>") == 5
    assert len(re.findall(r'class="xtick"', dom)) >= 5 * 3 and len(re.findall(r'class="ytick"', dom)) >= 5 * 2
    counts = [int(c) for c in re.findall(r'class="count"[^>]*>(\d+)</text>', dom)]
    assert counts and sum(counts) == sum(result.stats[k].n for k in result.stats)  # each bar labelled
    # the trend: dated x ticks (both audits), a dB axis, each point labelled with its value
    today = result.started_at[:10]
    assert dom.count(f">{today}<tspan") == 2 and "UTC</tspan>" in dom and "mean PSNR (dB)" in dom
    assert f'>{result.stats["psnr"].mean:.2f}</text>' in dom
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1100,3000",
                    url], capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (3000, 1100)
    colourful = (img.max(axis=2).astype(int) - img.min(axis=2)) > 40  # thumbnails and bars are saturated
    assert colourful.mean() > 0.005, "the screenshot shows no rendered images"
    bottom = img[2000:]  # the charts: blue bars and the trend's dots are drawn, not blank
    assert ((bottom[..., 2].astype(int) - bottom[..., 0]) > 100).mean() > 0.001, "no histogram bars rendered"
