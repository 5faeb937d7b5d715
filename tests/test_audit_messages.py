"""The audit's words, without running an audit: the verdict names its thresholds ("not checked"
for those off), shard mismatches read "expected … found …", unverified sources are listed by id
with their reason (capped in the CLI text), the LPIPS note keeps its remedy, the flow's summary
links the report or says there is none, and the report's charts have labelled axes, counts and
dates."""

from __future__ import annotations

import re

import pytest

from sg3archive.audit.accumulators import Stats
from sg3archive.audit.checks import AuditResult, Thresholds, lpips_note, shard_problem
from sg3archive.audit.record import NO_REPORT, summary_lines, summary_markdown
from sg3archive.audit.report import _ticks, render_report

SHA_A, SHA_B = "a" * 64, "b" * 64


def _result(thresholds: Thresholds | None = None, unverified: int = 2, lpips: bool = False) -> AuditResult:
    res = AuditResult("/data/archive", "2026-11-30T03:00:05+00:00", 20261130, 12, thresholds or Thresholds())
    res.stats = {"psnr": Stats(0.0, 60.0), "ms_ssim": Stats(0.0, 1.0), "psnr_drop": Stats(-5.0, 5.0),
                 "thumb_diff": Stats(0.0, 32.0), "lpips": Stats(0.0, 1.0)}
    for p in (11.5, 12.0, 12.2, 13.0, 31.0):
        res.stats["psnr"].add(p)
        res.stats["ms_ssim"].add(0.4)
        res.stats["psnr_drop"].add(0.0)
        if lpips:
            res.stats["lpips"].add(0.3)
    for d in (0, 0, 1, 0, 0, 2, 0):
        res.stats["thumb_diff"].add(float(d))
    res.sampled, res.compared, res.shards_checked, res.lpips_measured = 5 + unverified, 5, 3, lpips
    kinds = ["missing", "changed", "unreadable"]
    for i in range(unverified):
        uri = f"file:///photos/img{i:02d}.png"
        reason = {"missing": f"source missing: {uri}",
                  "changed": f"source changed: {uri}: sha256 expected {SHA_A} found {SHA_B}",
                  "unreadable": f"source unreadable: {uri}: not an image"}[kinds[i % 3]]
        res.unverified_sources.append({"id": f"id{i:02d}", "uri": uri, "kind": kinds[i % 3], "reason": reason})
    return res


def test_verdict_names_the_thresholds_and_those_not_checked() -> None:
    res = _result()
    assert res.verdict() == ("PASSED (thresholds: PSNR drop ≤ 0.5 dB vs encode time, "
                             "thumbnail difference ≤ 2 levels; not checked: min PSNR, min MS-SSIM, max LPIPS)")
    assert "None" not in res.verdict()
    res.problems.append("quality: row x: PSNR 12.00 dB below the threshold 30.0 dB")
    full = _result(Thresholds(min_psnr=30, min_ms_ssim=0.9, max_lpips=0.2, max_psnr_drop=None), lpips=True)
    assert full.thresholds_text() == ("thresholds: thumbnail difference ≤ 2 levels, PSNR ≥ 30 dB, MS-SSIM ≥ 0.9, "
                                      "LPIPS ≤ 0.2; not checked: max PSNR drop")
    assert res.verdict().startswith("FAILED (thresholds: ")
    # a set threshold that could not be applied says why
    no_lpips = _result(Thresholds(max_lpips=0.2))
    assert "not checked: min PSNR, min MS-SSIM, max LPIPS (LPIPS not measured)" in no_lpips.thresholds_text()
    nothing_compared = _result()
    nothing_compared.compared, nothing_compared.stats["psnr"] = 0, Stats(0.0, 60.0)  # all sources gone
    assert nothing_compared.thresholds_text().startswith(
        "thresholds: thumbnail difference ≤ 2 levels; not checked: max PSNR drop (no source compared)")
    assert nothing_compared.quality_text().startswith("quality not measured")


def test_quality_is_shown_beside_the_verdict() -> None:
    text = _result().quality_text()
    assert text.startswith("mean PSNR 15.94 dB (min 11.50), MS-SSIM 0.400 over 5 images")
    assert "about the thresholds only" in text


@pytest.mark.parametrize("finding, message", [
    (f"s-0001.parquet: sha256 {SHA_B}, record says {SHA_A}", f"sha256 mismatch: expected {SHA_A} found {SHA_B}"),
    ("s-0001.parquet: 3 rows, record says 4", "row count mismatch: expected 4 found 3"),
    ("s-0001.parquet: 100 bytes, record says 120", "size mismatch: expected 120 bytes found 100"),
    ("s-0001.parquet: its metadata says kind 'failures', record says 'images'",
     "kind mismatch: expected 'images' found 'failures'"),
    ("s-0001.parquet: missing (/data/archive/shards/s-0001.parquet)",
     "file missing (looked for it in /data/archive/shards/)"),
    ("s-0001.parquet: unreadable as an sg3archive shard (boom)", "unreadable as an sg3archive shard (boom)"),
])
def test_shard_findings_name_the_shard_once(finding: str, message: str) -> None:
    assert shard_problem("s-0001.parquet", finding) == message
    assert "s-0001.parquet" not in message


def test_lpips_note_keeps_the_remedy(tmp_path, monkeypatch) -> None:
    import torch.hub

    from sg3archive.metrics.quality import LpipsUnavailableError, resolve_backbone_state

    monkeypatch.setenv("SG3ARCHIVE_LPIPS_WEIGHTS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SG3ARCHIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise OSError("offline test")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(LpipsUnavailableError) as info:
        resolve_backbone_state("alex")
    note = lpips_note(str(info.value), threshold_set=True)
    assert note.startswith("LPIPS not measured (so max LPIPS is not checked): ")
    assert "sg3archive lpips-weights --fetch" in note and "$SG3ARCHIVE_LPIPS_WEIGHTS" in note
    assert note.endswith(str(info.value))  # whole, never cut to its first line
    short = lpips_note("x.pth holds a list, not a state dict.", threshold_set=False)
    assert "sg3archive lpips-weights --fetch" in short and "SG3ARCHIVE_LPIPS_WEIGHTS" in short


def test_cli_text_lists_unverified_sources_up_to_a_limit() -> None:
    res = _result(unverified=13)
    res.notes.append("LPIPS not measured: first line\nremedy: run `sg3archive lpips-weights --fetch`")
    lines = summary_lines(res.record(), "/tmp/r.html", limit=10)
    assert lines[0] == f"audit {res.verdict()}"
    assert lines[1].startswith("  quality: mean PSNR 15.94 dB")
    start = lines.index("  sources not verified (13; their quality was not measured; "
                        "not archive damage, so not a failure):")
    assert lines[start + 1] == "    id00: source missing: file:///photos/img00.png"
    assert lines[start + 2] == (f"    id01: source changed: file:///photos/img01.png: "
                                f"sha256 expected {SHA_A} found {SHA_B}")
    assert lines[start + 3] == "    id02: source unreadable: file:///photos/img02.png: not an image"
    assert lines[start + 11] == "    … and 3 more (all in --json and the HTML report)"
    assert "        remedy: run `sg3archive lpips-weights --fetch`" in lines
    assert lines[-1] == "report: /tmp/r.html"
    rec = res.record()
    assert [u["id"] for u in rec["unverified_sources"]] == [f"id{i:02d}" for i in range(13)]
    assert set(rec["unverified_sources"][0]) == {"id", "uri", "kind", "reason"}


def test_flow_summary_links_the_report_or_says_there_is_none() -> None:
    rec = _result().record()
    with_report = summary_markdown(rec, "/tmp/audit report.html")
    assert "Report: [/tmp/audit report.html](file:///tmp/audit%20report.html)" in with_report
    assert "None" not in with_report
    assert with_report.startswith("# Audit PASSED\n\nPASSED against the thresholds: PSNR drop ≤ 0.5 dB")
    assert "- `id00`: source missing: file:///photos/img00.png" in with_report
    without = summary_markdown(rec, None)
    assert f"Report: {NO_REPORT}." in without and NO_REPORT == "no HTML report (pass report=… to write one)"
    assert "None" not in without
    assert "s3://b/r.html" in summary_markdown(rec, "s3://b/r.html")


def test_report_names_thresholds_sources_axes_counts_and_dates() -> None:
    res = _result(Thresholds(min_psnr=30.0))
    res.problems.append("integrity: shard s-1.parquet: sha256 mismatch: expected aa found bb")
    history = [{"started_at": f"2026-11-{d}T03:00:0{i}+00:00", "passed": i != 1, "mean_psnr": 24.0 + i}
               for i, d in enumerate((27, 28, 29))]
    history.append({"started_at": "2026-11-30T03:00:05+00:00", "passed": False, "mean_psnr": 15.94})
    page = render_report(res, history)
    assert ">None<" not in page and "None" not in re.sub(r"<[^>]+>", " ", page)
    assert "FAILED</strong> against the thresholds: PSNR drop ≤ 0.5 dB vs encode time" in page
    assert "not checked: min MS-SSIM, max LPIPS" in page
    assert page.count(">not checked<") == 2  # min MS-SSIM, max LPIPS in the thresholds table
    assert "30 dB" in page and "Measured quality: mean PSNR 15.94 dB" in page
    # unverified sources, with the policy
    assert 'id="sources"' in page and "<code>id00</code>" in page and "<code>id01</code>" in page
    assert f"source changed: sha256 expected {SHA_A} found {SHA_B}" in page and "do not fail the audit" in page
    # histograms: axis titles with units, tick values, a count on each bar, the threshold
    for title in ("PSNR vs source (dB)", "PSNR drop vs encode time (dB)", "8×8 thumbnail difference (levels of 255)",
                  "MS-SSIM vs source (1 = identical)"):
        assert f'font-weight="bold">{title}</text>' in page
    assert page.count('font-weight="bold">images</text>') == 4  # LPIPS has no values here
    assert 'class="count"' in page and re.search(r'class="count"[^>]*>3</text>', page)  # three values in 12–15 dB
    assert re.search(r'class="xtick"[^>]*>60</text>', page) and "threshold 30" in page
    assert "LPIPS vs source (0 = identical): no values" in page
    # trend: dated x axis, dB y axis with ticks, labelled points
    assert "mean PSNR (dB)" in page and "audit date (UTC)" in page
    for day in ("2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30"):
        assert f">{day}<tspan" in page
    assert "03:00 UTC" in page and ">15.94</text>" in page and ">26.00</text>" in page
    assert re.search(r'class="ytick"[^>]*>20</text>', page)
    assert "over 4 audits (2026-11-27 to 2026-11-30" in page


def test_ticks_are_round() -> None:
    assert _ticks(0, 60) == [0, 20, 40, 60]
    assert _ticks(-5, 5) == [-5, 0, 5]
    assert _ticks(24.52, 25.52, outward=True) == [24.5, 25.0, 25.5, 26.0]
    assert _ticks(0, 3, 4) == [0, 1, 2, 3]
