"""A self-contained HTML audit report: summary, thresholds, problems, worst images
(original | restored | difference), metric distributions and the trend over past audits.
Images are inline PNGs and charts inline SVG, so the file can be mailed or archived alone."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from sg3archive.audit.accumulators import Stats
from sg3archive.audit.checks import AuditResult


def _png(img: np.ndarray, scale: int = 2) -> str:
    pil = Image.fromarray(np.ascontiguousarray(img))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _histogram(name: str, s: Stats) -> str:
    if not s.n:
        return f"<p>{html.escape(name)}: no values</p>"
    w, h, top = 300, 90, max(s.hist) or 1
    bw = w / len(s.hist)
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{h - c / top * h:.1f}" width="{bw - 1:.1f}" height="{c / top * h:.1f}" '
                   f'fill="#4a7bd0"/>' for i, c in enumerate(s.hist))
    return (f'<figure><svg width="{w}" height="{h + 16}" role="img" aria-label="{html.escape(name)} histogram">{bars}'
            f'<text x="0" y="{h + 14}" font-size="11">{s.lo:g}</text><text x="{w - 30}" y="{h + 14}" '
            f'font-size="11">{s.hi:g}</text></svg><figcaption>{html.escape(name)}: n {s.n}, mean {s.mean:.3f}, '
            f'min {s.min:.3f}, max {s.max:.3f}</figcaption></figure>')


def _trend(history: list[dict]) -> str:
    points = [(i, r["mean_psnr"]) for i, r in enumerate(history) if r.get("mean_psnr") is not None]
    if len(points) < 1:
        return "<p>No earlier audits with a quality measurement.</p>"
    w, h = 400, 120
    ys = [p for _, p in points]
    lo, hi = min(ys) - 1, max(ys) + 1
    xs = [10 + (w - 20) * (i / max(1, len(history) - 1)) for i, _ in points]
    pts = " ".join(f"{x:.1f},{h - (y - lo) / (hi - lo) * h:.1f}" for x, y in zip(xs, ys))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{h - (y - lo) / (hi - lo) * h:.1f}" r="3" '
                   f'fill="{"#2a2" if history[i]["passed"] else "#c22"}"/>' for (i, y), x in zip(points, xs))
    return (f'<svg width="{w}" height="{h + 10}" role="img" aria-label="mean PSNR trend">'
            f'<polyline points="{pts}" fill="none" stroke="#333"/>{dots}</svg>'
            f"<p>Mean PSNR of the sampled reconstructions over {len(history)} audits "
            f"({lo + 1:.2f}–{hi - 1:.2f} dB); red dots are failed audits.</p>")


def render_report(result: AuditResult, history: list[dict]) -> str:
    """The report as one HTML document."""
    status = "PASSED" if result.passed else "FAILED"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in vars(result.thresholds).items())
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in result.problems) or "<li>none</li>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    worst = ""
    for score, item in result.worst:
        diff = np.clip(np.abs(item["original"].astype(np.int16) - item["restored"].astype(np.int16)) * 4, 0, 255)
        worst += (f'<tr><td>{_png(item["original"])}</td><td>{_png(item["restored"])}</td>'
                  f'<td>{_png(diff.astype(np.uint8))}</td><td>{html.escape(item["source_uri"])}<br>'
                  f'PSNR {item["psnr"]:.2f} dB, MS-SSIM {item["ms_ssim"]:.3f}</td></tr>')
    worst = worst or '<tr><td colspan="4">no source images were reachable for comparison</td></tr>'
    hists = "".join(_histogram(k, s) for k, s in result.stats.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sg3archive audit {status}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} .PASSED{{color:#171}} .FAILED{{color:#b11}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px}} figure{{display:inline-block;margin:0 1em 1em 0}}</style>
</head><body>
<h1 id="summary">Audit <span class="{status}">{status}</span></h1>
<p>Archive <code>{html.escape(result.archive)}</code>, started {result.started_at}, seed {result.seed};
{result.shards_checked} shards verified, {result.sampled} rows sampled, {result.compared} compared with their
sources, {len(result.orphans)} uncommitted shard files, {len(result.problems)} problems, {result.seconds:.1f} s.</p>
<h2 id="thresholds">Thresholds</h2><table>{rows}</table>
<h2 id="problems">Problems</h2><ul>{problems}</ul>{f"<p>Notes:</p><ul>{notes}</ul>" if notes else ""}
<h2 id="worst">Worst reconstructions (original | restored | difference ×4)</h2><table>{worst}</table>
<h2 id="distributions">Distributions</h2>{hists}
<h2 id="trend">Trend</h2>{_trend(history)}
</body></html>
"""
