"""A self-contained HTML audit report: the verdict and the thresholds it was reached against,
the absolute quality, the sampled rows as recorded (bytes per image, fidelity at the original
size, representations, contract, AVIF baseline), thresholds, problems, sources that could not be
verified, worst images at their original size (original | restored | difference), metric
distributions and the trend over past audits. Every PSNR, MS-SSIM and LPIPS is measured at the
original size; the one figure at the generator's square (the PSNR drop of rows written before
format version 4) is labelled a diagnostic.
Images are inline PNGs and charts inline SVG with labelled axes, so the file can be mailed or
archived alone."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math

import numpy as np
from PIL import Image

from sg3archive.audit.accumulators import Stats
from sg3archive.audit.checks import UNVERIFIED_POLICY, AuditFindings
from sg3archive.audit.thresholds import THRESHOLD_MEANING

# metric: (axis title, the threshold drawn on its histogram)
METRICS = {
    "psnr": ("PSNR vs source (dB)", "min_psnr"),
    "ms_ssim": ("MS-SSIM vs source (1 = identical)", "min_ms_ssim"),
    "psnr_drop": ("PSNR drop vs encode time (dB)", "max_psnr_drop"),
    "thumb_diff": ("8×8 thumbnail difference (levels of 255)", "thumb_tolerance"),
    "lpips": ("LPIPS vs source (0 = identical)", "max_lpips"),
}
# threshold: (unit, fails the audit when); its home: sg3archive.audit.thresholds

AXIS = "#444"
FONT = 'font-family="sans-serif" font-size="11" fill="#333"'


def _png(img: np.ndarray, scale: int = 2) -> str:
    pil = Image.fromarray(np.ascontiguousarray(img))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _ticks(lo: float, hi: float, count: int = 5, outward: bool = False) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^k), about ``count`` of them, within [lo, hi]
    or, with ``outward``, from the last round value at or below ``lo`` to the first at or above ``hi``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    if outward:
        first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    else:
        first, last = math.ceil(lo / step - 1e-9) * step, hi
    return [round(first + i * step, 10) for i in range(int((last - first) / step + 1e-9) + 1)]


def _histogram(name: str, s: Stats, threshold: float | None) -> str:
    title, _ = METRICS.get(name, (name, None))
    if not s.n:
        return f'<p class="no-values">{html.escape(title)}: no values</p>'
    left, right, top, bottom, w, h = 46, 14, 18, 44, 320, 130
    width, height = left + w + right, top + h + bottom
    most = max(s.hist)
    bw = w / len(s.hist)

    def x_at(v: float) -> float:
        return left + (v - s.lo) / (s.hi - s.lo) * w

    def y_at(c: float) -> float:
        return top + h - c / most * h

    parts = []
    for i, c in enumerate(s.hist):
        if c:
            parts.append(f'<rect x="{left + i * bw + 0.5:.1f}" y="{y_at(c):.1f}" width="{bw - 1:.1f}" '
                         f'height="{top + h - y_at(c):.1f}" fill="#4a7bd0"><title>{c}</title></rect>'
                         f'<text class="count" x="{left + (i + 0.5) * bw:.1f}" y="{y_at(c) - 3:.1f}" '
                         f'text-anchor="middle" {FONT}>{c}</text>')
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="{AXIS}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="{AXIS}"/>')
    for v in _ticks(s.lo, s.hi):
        parts.append(f'<line x1="{x_at(v):.1f}" y1="{top + h}" x2="{x_at(v):.1f}" y2="{top + h + 4}" stroke="{AXIS}"/>'
                     f'<text class="xtick" x="{x_at(v):.1f}" y="{top + h + 15}" text-anchor="middle" {FONT}>'
                     f'{v:g}</text>')
    for tick in [t for t in _ticks(0, most, 4) if t == int(t)]:
        parts.append(f'<line x1="{left - 4}" y1="{y_at(tick):.1f}" x2="{left}" y2="{y_at(tick):.1f}" stroke="{AXIS}"/>'
                     f'<text class="ytick" x="{left - 6}" y="{y_at(tick) + 3:.1f}" text-anchor="end" {FONT}>'
                     f'{tick:g}</text>')
    parts.append(f'<text class="xlabel" x="{left + w / 2:.1f}" y="{height - 6}" text-anchor="middle" {FONT} '
                 f'font-weight="bold">{html.escape(title)}</text>'
                 f'<text class="ylabel" transform="translate(11 {top + h / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'{FONT} font-weight="bold">images</text>')
    if threshold is not None and s.lo <= threshold <= s.hi:
        x = x_at(threshold)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{top + h}" stroke="#c22" '
                     f'stroke-dasharray="4 3"/>'
                     f'<text class="threshold" x="{x + 4:.1f}" y="{top + 12}" {FONT} fill="#c22" stroke="#fff" '
                     f'stroke-width="3" paint-order="stroke">threshold {threshold:g}</text>')
    outside = " (values outside the axis are counted in its end bars)" if s.min < s.lo or s.max > s.hi else ""
    return (f'<figure><svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)} histogram">'
            f'{"".join(parts)}</svg><figcaption>{html.escape(title)}: n {s.n} images, mean {s.mean:.3f}, '
            f'min {s.min:.3f}, max {s.max:.3f}{outside}</figcaption></figure>')


def _when(started_at: str) -> tuple[str, str]:
    """("2026-12-01", "03:00 UTC") from an ISO timestamp."""
    try:
        t = dt.datetime.fromisoformat(started_at).astimezone(dt.timezone.utc)
    except (TypeError, ValueError):
        return str(started_at), ""
    return t.strftime("%Y-%m-%d"), t.strftime("%H:%M UTC")


def _trend(history: list[dict]) -> str:
    """Mean PSNR per audit (oldest first), one point per audit at its date and time."""
    points = [(i, r["mean_psnr"]) for i, r in enumerate(history) if r.get("mean_psnr") is not None]
    if not points:
        return "<p>No audits with a quality measurement yet.</p>"
    left, right, top, bottom, w, h = 56, 30, 20, 48, 620, 170
    width, height = left + w + right, top + h + bottom
    ys = [y for _, y in points]
    ticks = _ticks(min(ys) - 0.5, max(ys) + 0.5, outward=True)
    lo, hi = ticks[0], ticks[-1]

    def x_at(i: int) -> float:
        return left + w / 2 if len(history) == 1 else left + 10 + (w - 20) * i / (len(history) - 1)

    def y_at(v: float) -> float:
        return top + h - (v - lo) / (hi - lo) * h

    parts = [f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="{AXIS}"/>'
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="{AXIS}"/>']
    for v in ticks:
        parts.append(f'<line x1="{left - 4}" y1="{y_at(v):.1f}" x2="{left + w}" y2="{y_at(v):.1f}" stroke="#e4e4e4"/>'
                     f'<text class="ytick" x="{left - 6}" y="{y_at(v) + 3:.1f}" text-anchor="end" {FONT}>{v:g}</text>')
    every = max(1, math.ceil(len(history) / 8))  # at most ~8 dated ticks
    for i, r in enumerate(history):
        if i % every and i != len(history) - 1:
            continue
        day, time = _when(r["started_at"])
        parts.append(f'<line x1="{x_at(i):.1f}" y1="{top + h}" x2="{x_at(i):.1f}" y2="{top + h + 4}" stroke="{AXIS}"/>'
                     f'<text class="xtick" x="{x_at(i):.1f}" y="{top + h + 15}" text-anchor="middle" {FONT}>{day}'
                     f'<tspan x="{x_at(i):.1f}" dy="11">{time}</tspan></text>')
    parts.append(f'<polyline points="{" ".join(f"{x_at(i):.1f},{y_at(y):.1f}" for i, y in points)}" fill="none" '
                 f'stroke="#555"/>')
    for i, y in points:
        ok = history[i]["passed"]
        parts.append(f'<circle cx="{x_at(i):.1f}" cy="{y_at(y):.1f}" r="4" fill="{"#2a2" if ok else "#c22"}">'
                     f'<title>{html.escape(str(history[i]["started_at"]))}: {y:.2f} dB, '
                     f'{"passed" if ok else "FAILED"}</title></circle>'
                     f'<text class="point" x="{x_at(i):.1f}" y="{y_at(y) - 8:.1f}" text-anchor="middle" {FONT}>'
                     f'{y:.2f}</text>')
    parts.append(f'<text class="ylabel" transform="translate(13 {top + h / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'{FONT} font-weight="bold">mean PSNR (dB)</text>'
                 f'<text class="xlabel" x="{left + w / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT} '
                 f'font-weight="bold">audit date (UTC)</text>')
    first, last = _when(history[0]["started_at"])[0], _when(history[-1]["started_at"])[0]
    audits = f"{len(history)} audits" if len(history) > 1 else "1 audit"
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="mean PSNR trend">{"".join(parts)}</svg>'
            f"<p>Mean PSNR of the sampled reconstructions against their sources over {audits} "
            f"({first} to {last}; {min(ys):.2f}–{max(ys):.2f} dB). Green: the audit passed; red: it failed.</p>")


def _thresholds_table(result: AuditFindings) -> str:
    rows = ""
    for t in result.threshold_status():
        unit, meaning = THRESHOLD_MEANING.get(t.name, ("", ""))
        if t.value is None:
            value = "not checked"
        else:
            value = f"{t.value:g} {unit}".strip() + ("" if t.checked else f" — not checked ({t.why_not})")
        rows += (f'<tr class="{"checked" if t.checked else "not-checked"}"><td>{html.escape(t.label)}</td>'
                 f"<td>{html.escape(value)}</td><td>{html.escape(meaning)}</td></tr>")
    return f"<table><tr><th>threshold</th><th>value</th><th>the audit fails when</th></tr>{rows}</table>"


def _sources_section(result: AuditFindings) -> str:
    items = result.unverified_sources
    if not items:
        return (f"<p>All {result.compared} sampled rows' sources were reachable with their recorded sha256.</p>"
                if result.sampled else "<p>No rows were sampled.</p>")
    counts = {k: sum(u["kind"] == k for u in items) for k in ("missing", "changed", "unreadable", "refused")}
    rows = "".join(f'<tr class="{html.escape(u["kind"])}"><td><code>{html.escape(str(u["id"]))}</code></td>'
                   f'<td>{html.escape(u["uri"])}</td>'
                   f'<td>{html.escape(u["reason"].replace(": " + u["uri"], ""))}</td></tr>' for u in items)
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return (f"<p>{len(items)} of {result.sampled} sampled rows ({kinds}) "
            f"could not be compared with their source. Such sources are {html.escape(UNVERIFIED_POLICY)}.</p>"
            f"<table><tr><th>image id</th><th>source URI</th><th>reason</th></tr>{rows}</table>")


SQUARE_NOTE = ("PSNR, MS-SSIM and LPIPS compare each restored image with its source at the original size. The PSNR "
               "drop of rows written before format version 4 compares the generator's square with the square's "
               "encode-time PSNR: a diagnostic (those rows record no figure at the original size).")


def _sample_section(result: AuditFindings) -> str:
    """The sampled rows as recorded: bytes, fidelity at the original size, mix, contract, baseline."""
    lines = result.summary.lines()
    if not lines:
        return "<p>No rows were sampled.</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (f"<p>The {result.summary.images} sampled rows as their archive records them (fidelity as measured at "
            f"encode time, at the original size):</p><ul>{items}</ul>")


def _worst_row(item: dict) -> str:
    """One worst image: original | restored | difference ×4 (computed at the original size)."""
    diff = item.get("diff")
    if diff is None:
        diff = np.clip(np.abs(item["original"].astype(np.int16) - item["restored"].astype(np.int16)) * 4, 0,
                       255).astype(np.uint8)
    scale = 2 if max(item["original"].shape[:2]) <= 128 else 1
    size = f' at {html.escape(item["size"])}' if item.get("size") else ""
    kind = f' ({html.escape(item["representation"])})' if item.get("representation") else ""
    return (f'<tr><td>{_png(item["original"], scale)}</td><td>{_png(item["restored"], scale)}</td>'
            f'<td>{_png(diff, scale)}</td><td><code>{html.escape(str(item["id"]))}</code>{kind}<br>'
            f'{html.escape(item["source_uri"])}<br>'
            f'PSNR {item["psnr"]:.2f} dB, MS-SSIM {item["ms_ssim"]:.3f}{size}</td></tr>')


def render_report(result: AuditFindings, history: list[dict]) -> str:
    """The report as one HTML document."""
    status = "PASSED" if result.passed else "FAILED"
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in result.problems) or "<li>none</li>"
    notes = "".join(f'<li class="note">{html.escape(n)}</li>' for n in result.notes)
    worst = "".join(_worst_row(item) for _score, item in result.worst)
    worst = worst or '<tr><td colspan="4">no source images were reachable for comparison</td></tr>'
    th = result.thresholds
    hists = "".join(_histogram(k, s, getattr(th, METRICS[k][1], None) if k in METRICS else None)
                    for k, s in result.stats.items())
    checked_text = result.thresholds_text()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sg3archive audit {status}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}} .PASSED{{color:#171}} .FAILED{{color:#b11}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px;text-align:left;vertical-align:top}}
td{{overflow-wrap:anywhere}} tr.not-checked td{{color:#777}} figure{{display:inline-block;margin:0 1em 1em 0}}
figcaption{{font-size:90%;max-width:380px}} li{{overflow-wrap:anywhere}} li.note{{white-space:pre-wrap}}
#verdict{{font-size:110%}} #quality{{background:#f4f4f4;padding:6px}}</style>
</head><body>
<h1 id="summary">Audit <span class="{status}">{status}</span></h1>
<p id="verdict"><strong class="{status}">{status}</strong> against the {html.escape(checked_text)}.
The verdict is about these thresholds only.</p>
<p id="quality">Measured quality: {html.escape(result.quality_text())}.</p>
<p>Archive <code>{html.escape(result.archive)}</code>, started {result.started_at}, seed {result.seed};
{result.shards_checked} shards verified, {result.sampled} rows sampled, {result.compared} compared with their
sources, {len(result.unverified_sources)} sources not verified, {len(result.orphans)} uncommitted shard files,
{len(result.problems)} problems, {result.seconds:.1f} s.</p>
<h2 id="sample">Sampled rows: size, fidelity at the original size, contract</h2>{_sample_section(result)}
<h2 id="thresholds">Thresholds</h2>{_thresholds_table(result)}
<h2 id="problems">Problems ({len(result.problems)})</h2><ul>{problems}</ul>
{f"<h3 id='notes'>Notes</h3><ul>{notes}</ul>" if notes else ""}
<h2 id="sources">Sources not verified ({len(result.unverified_sources)})</h2>{_sources_section(result)}
<h2 id="worst">Worst reconstructions at the original size (original | restored | difference ×4)</h2>
<table>{worst}</table>
<h2 id="distributions">Distributions</h2>
<p>Counts of sampled images per bin; the dashed red line is the threshold where one is set.
{html.escape(SQUARE_NOTE)}</p>{hists}
<h2 id="trend">Trend</h2>{_trend(history)}
</body></html>
"""
