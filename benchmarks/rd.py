"""Rate–distortion of every way an image can be stored: bytes/image against PSNR, MS-SSIM (and LPIPS
when its weights are provisioned), always measured restored-vs-ORIGINAL at the ORIGINAL SIZE with
``sg3archive.metrics.fidelity.measure_fidelity``.

Image sets (``--sets``, any of a, b, c):

    a  the bundled generator's own images: ``sg3archive generate`` at held-out seeds (truncation 0.7),
       64x64 PNG files; the bundled encoder was trained on this generator's images.
    b  the reference fixture generators (t64, r64 under shared/fixtures/sg3_reference). No encoder
       exists for them, so their latent curve is a codec-only round trip: W+ from the mapping network
       (seeded z, psi 0.7) -> LatentCodec fitted on other seeds' W+ -> compress / decompress ->
       synthesis, against G(w) itself (64x64, which is their original size). It measures the
       codec's loss alone, not an encoder's.
    c  real photographs (public domain / CC0, from scikit-image via tests/photos.py) at several
       sizes, aspect ratios and file types.

Curves (per set):

    latent            sets a, c: the library's own compress + restore (``compress_images`` /
                      ``restore_images``, ``size="original"``), one new archive per setting: every
                      codec profile of ``PROFILE_NAMES`` (``auto`` excluded: it needs a byte target)
                      and uniform bits 3..8. Bytes = the row's payload. Set b: the codec-only trip above.
    avif, webp, jpeg  Pillow (``sg3archive.images.classical.encode_rgb`` / ``decode_rgb``) at qualities
                      spanning 0..100; bytes = the encoded file.
    latent+residual   an experiment: the latent restoration at the original size plus the residual
                      (original - restored + 128, clipped to 0..255) coded with WebP or AVIF; restored
                      = latent + decoded residual - 128 (clipped); bytes = payload + residual file.
    hybrid            compress with a quality contract (``CompressJob(quality={"min_psnr": X})``), then
                      restore: the product's per-image choice among its representations (skipped, with a
                      line saying so, where this sg3archive has no contract).
    original          the source file kept verbatim (identical pixels): bytes = the file's size.

Summaries: for PSNR floors 25/30/35 dB, the bytes/image each method needs, taking for every image
the smallest setting of that method whose restoration meets the floor (so every method gets the
same per-image choice the hybrid makes); and, per image, where latent+residual beats the cheapest of
{latent, AVIF, WebP} at equal PSNR.

    python benchmarks/rd.py                    # all sets, full sweeps (about 15-20 min on 2 cores)
    python benchmarks/rd.py --quick --out /tmp/rd   # a few images and settings (about 1 min)
    python benchmarks/rd.py --sets c --out docs/rd

With ``--out DIR``: ``DIR/rd.md`` (every table) and ``DIR/rd.png`` (the curves).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/photos.py: the real photographs

from photos import PhotoSpec, write_photos  # noqa: E402

from sg3archive.codec.names import AUTO_PROFILE, DEFAULT_PROFILE, PROFILE_NAMES  # noqa: E402

MATCHED_PROFILE = "matched"  # sg3archive.codec.names.MATCHED_PROFILE where this sg3archive has it

FIXTURES = REPO.parent / "shared" / "fixtures" / "sg3_reference"
PSI = 0.7
FLOORS = (25.0, 30.0, 35.0)
WIN_FLOORS = tuple(float(f) for f in range(15, 51))  # 1-dB grid on which latent+residual is compared
HELD_OUT_SEED = 700_000  # set a: far from the encoder's training and evaluation seeds
FIXTURE_SEEDS = {"calib": 100_000, "test": 200_000}
CLASSICAL = ("avif", "webp", "jpeg")  # sg3archive.images.classical.BENCHMARK_CODECS
RESIDUAL_CODECS = ("webp", "avif")


@dataclass(frozen=True)
class Settings:
    """How much one run measures (``--quick`` or full)."""

    generated: int  # set a images
    fixture_images: int  # set b test images per network
    fixture_calib: int  # set b: W+ the codec is fitted on
    photos: tuple[PhotoSpec, ...]  # set c
    uniform_bits: tuple[int, ...]
    profiles: tuple[str, ...]
    qualities: tuple[int, ...]  # classical codecs
    residual_qualities: tuple[int, ...]
    residual_bases: int  # latent settings the residual is added to (the default profile first)
    hybrid_floors: tuple[float, ...]
    hybrid_sets: tuple[str, ...]  # sets whose hybrid is measured (each floor is a whole compress + restore)


PRESET_PROFILES = tuple(p for p in PROFILE_NAMES if p != AUTO_PROFILE)
FULL = Settings(
    generated=16, fixture_images=16, fixture_calib=512,
    photos=(PhotoSpec("coffee", (512, 384), "png"), PhotoSpec("rocket", (300, 1000), "jpg"),
            PhotoSpec("chelsea", (1000, 300), "webp"), PhotoSpec("astronaut", (257, 129), "png"),
            PhotoSpec("hubble", (480, 360), "jpg"), PhotoSpec("retina", (384, 384), "png"),
            PhotoSpec("astronaut", (64, 64), "png"), PhotoSpec("coffee", (96, 160), "jpg")),
    uniform_bits=(3, 4, 5, 6, 7, 8), profiles=PRESET_PROFILES,
    qualities=(0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
    residual_qualities=(0, 10, 30, 50, 70, 90), residual_bases=2, hybrid_floors=FLOORS,
    hybrid_sets=("a", "c"))
QUICK = Settings(
    generated=2, fixture_images=2, fixture_calib=64,
    photos=(PhotoSpec("coffee", (160, 120), "png"), PhotoSpec("rocket", (90, 200), "jpg")),
    # One latent setting, not the default "matched": matched's rate control measures PSNR through the
    # generator at compress time (a minute or more on 2 cores), too slow for a quick run.
    uniform_bits=(4,), profiles=(),
    qualities=(5, 50, 95), residual_qualities=(50,), residual_bases=1, hybrid_floors=(30.0,), hybrid_sets=("c",))


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One original image: ``rgb [H, W, 3]`` uint8 as its file decodes, and the file's size."""

    name: str
    rgb: np.ndarray
    file_bytes: int

    @property
    def size_text(self) -> str:
        return f"{self.rgb.shape[1]}x{self.rgb.shape[0]}"


@dataclass(frozen=True)
class Measure:
    """One restoration of one item: its bytes and fidelity against the original."""

    item: str
    bytes: int
    psnr: float
    ms_ssim: float
    lpips: float | None


@dataclass(frozen=True)
class Point:
    """One setting of one curve over all items of a set."""

    curve: str
    setting: str
    measures: tuple[Measure, ...]
    extra: str = ""  # e.g. the hybrid's representation counts

    @property
    def mean_bytes(self) -> float:
        return float(np.mean([m.bytes for m in self.measures]))

    @property
    def mean_psnr(self) -> float:
        values = [m.psnr for m in self.measures]
        return math.inf if all(math.isinf(v) for v in values) else float(np.mean([min(v, 99.0) for v in values]))

    @property
    def worst_psnr(self) -> float:
        return min(m.psnr for m in self.measures)

    @property
    def mean_ms_ssim(self) -> float:
        return float(np.mean([m.ms_ssim for m in self.measures]))

    @property
    def mean_lpips(self) -> float | None:
        values = [m.lpips for m in self.measures if m.lpips is not None]
        return float(np.mean(values)) if values and len(values) == len(self.measures) else None


@dataclass
class SetResult:
    key: str
    description: str
    items: list[Item]
    points: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Measurer:
    """``measure_fidelity`` with LPIPS when its weights are provisioned (never downloaded here)."""

    def __init__(self) -> None:
        from sg3archive.metrics.fidelity import measure_fidelity

        self._measure = measure_fidelity
        self.perceptual: torch.nn.Module | None = None
        self.lpips_status = "not provisioned"
        os.environ.setdefault("SG3ARCHIVE_LPIPS_DOWNLOAD", "0")
        try:
            from sg3archive.metrics import LPIPS

            self.perceptual = LPIPS("alex")
            self.lpips_status = f"alex ({getattr(self.perceptual, 'weights_source', 'provisioned')})"
        except Exception as exc:  # missing weights are the normal case offline
            self.lpips_status = f"not provisioned ({type(exc).__name__})"

    def __call__(self, item: Item, restored: np.ndarray, nbytes: int) -> Measure:
        fid = self._measure(item.rgb, restored, perceptual=self.perceptual)
        return Measure(item.name, int(nbytes), fid.psnr, fid.ms_ssim, fid.lpips)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def items_in(folder: Path) -> list[Item]:
    return [Item(p.stem, read_rgb(p), p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file()]


# -- classical codecs -----------------------------------------------------------------------------
def classical_points(items: Sequence[Item], qualities: Iterable[int], measure: Measurer) -> list[Point]:
    from sg3archive.images.classical import decode_rgb, encode_rgb

    points = []
    for codec in CLASSICAL:
        for q in qualities:
            measures = []
            for item in items:
                data = encode_rgb(item.rgb, codec, q)
                measures.append(measure(item, decode_rgb(data), len(data)))
            points.append(Point(codec, f"q{q}", tuple(measures)))
    return points


def residual_points(items: Sequence[Item], bases: Sequence[tuple[Point, dict[str, np.ndarray]]],
                    qualities: Iterable[int], measure: Measurer) -> list[Point]:
    """latent + residual: for each base latent setting, residual codecs and qualities."""
    from sg3archive.images.classical import decode_rgb, encode_rgb

    points = []
    by_name = {item.name: item for item in items}
    for base, restored in bases:
        latent_bytes = {m.item: m.bytes for m in base.measures}
        for codec in RESIDUAL_CODECS:
            for q in qualities:
                measures = []
                for name, rec in restored.items():
                    item = by_name[name]
                    residual = np.clip(item.rgb.astype(np.int16) - rec.astype(np.int16) + 128, 0, 255).astype(np.uint8)
                    data = encode_rgb(residual, codec, q)
                    decoded = decode_rgb(data).astype(np.int16)
                    out = np.clip(rec.astype(np.int16) + decoded - 128, 0, 255).astype(np.uint8)
                    measures.append(measure(item, out, latent_bytes[name] + len(data)))
                points.append(Point(f"latent+residual {codec}", f"{base.setting} + {codec} q{q}", tuple(measures)))
    return points


def original_point(items: Sequence[Item]) -> Point:
    return Point("original", "source file", tuple(Measure(i.name, i.file_bytes, math.inf, 1.0, 0.0) for i in items))


# -- the latent path through the library ----------------------------------------------------------
def latent_settings(s: Settings) -> list[tuple[str, dict[str, Any]]]:
    return [(p, {"profile": p}) for p in s.profiles] + [(f"uniform {b}", {"profile": b}) for b in s.uniform_bits]


def payload_sizes(archive: Path) -> tuple[dict[str, int], dict[str, str | None]]:
    """``({stem: stored bytes}, {stem: representation})`` of an archive's rows. Stored bytes = the
    latent payload plus, where the archive has that column (format 4), ``image_data`` (a classical
    file or the original's bytes); the representation is None where the archive records none."""
    from sg3archive.store.archive import ArchiveStore
    from sg3archive.store.format import images_schema

    store = ArchiveStore.open(str(archive))
    known = set(images_schema().names)
    columns = ["source_name", "source_uri", "payload"] + [c for c in ("image_data", "representation") if c in known]
    sizes: dict[str, int] = {}
    kinds: dict[str, str | None] = {}
    for batch in store.iter_batches("images", columns=columns):
        rows = batch.to_pydict()
        for i, payload in enumerate(rows["payload"]):
            stem = Path(rows["source_name"][i] or rows["source_uri"][i]).stem
            image_data = rows.get("image_data", [None] * len(rows["payload"]))[i]
            sizes[stem] = len(payload or b"") + len(image_data or b"")
            kinds[stem] = rows.get("representation", [None] * len(rows["payload"]))[i]
    return sizes, kinds


def library_round_trip(folder: Path, items: Sequence[Item], work: Path, slug: str, curve: str, setting: str,
                       fields: dict[str, Any], measure: Measurer) -> tuple[Point, dict[str, np.ndarray]]:
    """compress ``folder`` into a new archive with ``job_fields``, restore it at the original size
    (PNG), measure every restored file against its original."""
    from sg3archive.pipeline import CompressJob, RestoreJob, compress_images, restore_images

    archive, out = work / f"archive-{slug}", work / f"restored-{slug}"
    job = CompressJob(source=str(folder), destination=str(archive), device="cpu",
                      calibration_images=len(items), **job_fields(fields))
    report = compress_images(job, progress=False)
    if report.failures or report.images != len(items):
        raise RuntimeError(f"compress archived {report.images} of {len(items)} images ({report.failures} failed)")
    restore_images(RestoreJob(archive=str(archive), destination=str(out), size="original", format="png",
                              device="cpu"), progress=False)
    sizes, kinds = payload_sizes(archive)
    restored = {item.name: read_rgb(out / f"{item.name}.png") for item in items}
    measures = tuple(measure(item, restored[item.name], sizes[item.name]) for item in items)
    counts: dict[str, int] = {}
    for kind in kinds.values():
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    extra = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
    if curve == "hybrid" and not extra:
        extra = "no representation recorded"
    return Point(curve, setting, measures, extra), restored


def job_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` plus what this sg3archive's CompressJob needs to store the latent and nothing else,
    unmeasured by the AVIF baseline (a contract-aware sg3archive would otherwise pick per image)."""
    from sg3archive.pipeline import CompressJob

    known = CompressJob.model_fields
    extra: dict[str, Any] = {}
    if "quality" in known and "quality" not in fields:
        extra["quality"] = "none"
        if "representations" in known:
            extra["representations"] = ["latent"]
    if "baseline_images" in known:
        extra["baseline_images"] = 0
    return {**extra, **fields}


def hybrid_available() -> str | None:
    """None when this sg3archive compresses to a quality contract; else why not."""
    from sg3archive.pipeline import CompressJob

    if "quality" not in CompressJob.model_fields:
        return "hybrid: not available in this version (CompressJob has no `quality` field)"
    return None


def library_curves(result: SetResult, folder: Path, work: Path, s: Settings, measure: Measurer) -> None:
    bases = []
    for label, fields in latent_settings(s):
        started = time.perf_counter()
        try:
            point, restored = library_round_trip(folder, result.items, work, f"{result.key}-{label.replace(' ', '')}",
                                                 "latent", label, fields, measure)
        except Exception as exc:  # one setting failing must not lose the others
            result.notes.append(f"latent {label}: {type(exc).__name__}: {exc}")
            print(f"  latent {label}: {type(exc).__name__}: {exc}", flush=True)
            continue
        result.notes.append(f"latent {label}: compress + restore of {len(result.items)} images took "
                            f"{time.perf_counter() - started:.0f} s")
        result.points.append(point)
        bases.append((point, restored))
        print(f"  latent {label}: {point.mean_bytes:.0f} B/img, {point.mean_psnr:.2f} dB", flush=True)
    add_classical_and_residual(result, bases, s, measure)
    if result.key not in s.hybrid_sets:
        result.notes.append("hybrid: not measured in this run (see --quick)")
        return
    why_not = hybrid_available()
    if why_not:
        result.notes.append(why_not)
        print(f"  {why_not}", flush=True)
        return
    for floor in s.hybrid_floors:
        started = time.perf_counter()
        try:
            point, _ = library_round_trip(folder, result.items, work, f"{result.key}-hybrid{floor:g}", "hybrid",
                                          f"min_psnr {floor:g}", {"quality": {"min_psnr": floor}}, measure)
        except Exception as exc:  # the contract API is new: report, do not stop the benchmark
            result.notes.append(f"hybrid min_psnr {floor:g}: {type(exc).__name__}: {exc}")
            print(f"  hybrid min_psnr {floor:g}: {type(exc).__name__}: {exc}", flush=True)
            continue
        result.points.append(point)
        result.notes.append(f"hybrid min_psnr {floor:g}: compress + restore of {len(result.items)} images took "
                            f"{time.perf_counter() - started:.0f} s")
        if point.worst_psnr < floor:
            result.notes.append(f"hybrid min_psnr {floor:g}: the contract was NOT met: worst image {point.worst_psnr:.2f} "
                                f"dB ({point.extra}); this sg3archive accepts the contract but does not yet keep it")
        print(f"  hybrid min_psnr {floor:g}: {point.mean_bytes:.0f} B/img, worst {point.worst_psnr:.2f} dB "
              f"({point.extra or 'no per-representation counts'})", flush=True)


def add_classical_and_residual(result: SetResult, bases: list[tuple[Point, dict[str, np.ndarray]]], s: Settings,
                               measure: Measurer) -> None:
    result.points.extend(classical_points(result.items, s.qualities, measure))
    print(f"  classical: {len(CLASSICAL)} codecs x {len(s.qualities)} qualities", flush=True)
    # The default profile first, then the cheapest settings: the residual has to carry the rest anyway.
    ordered = sorted(bases, key=lambda b: (b[0].setting != DEFAULT_PROFILE, b[0].mean_bytes))
    result.points.extend(residual_points(result.items, ordered[: s.residual_bases], s.residual_qualities, measure))
    result.points.append(original_point(result.items))


# -- the sets -------------------------------------------------------------------------------------
def generated_set(work: Path, s: Settings, measure: Measurer) -> SetResult:
    from sg3archive.cli import main as cli

    folder = work / "a-images"
    seeds = f"{HELD_OUT_SEED}-{HELD_OUT_SEED + s.generated - 1}"
    cli(["generate", "--seeds", seeds, "--trunc", str(PSI), "--out", str(folder), "--no-grid", "--device", "cpu"],
        standalone_mode=False)
    result = SetResult("a", f"bundled generator's own images: `sg3archive generate --seeds {seeds} --trunc {PSI}`, "
                            f"{s.generated} PNG files 64x64", items_in(folder))
    library_curves(result, folder, work, s, measure)
    return result


def photo_set(work: Path, s: Settings, measure: Measurer) -> SetResult:
    folder = work / "c-photos"
    write_photos(folder, s.photos)
    items = items_in(folder)
    sizes = ", ".join(f"{spec.file_name}" for spec in s.photos)
    result = SetResult("c", f"real photographs (public domain / CC0, scikit-image via tests/photos.py): {sizes}", items)
    library_curves(result, folder, work, s, measure)
    return result


def fixture_set(name: str, s: Settings, measure: Measurer) -> SetResult:
    import sg3archive
    from sg3archive.codec import LatentCodec
    from sg3archive.images import to_uint8
    from sg3archive.sampling import seed_latents

    G: Any = sg3archive.load_network(str(FIXTURES / name / "network-snapshot.pkl"))

    def ws_of(first: int, n: int) -> torch.Tensor:
        return G.mapping(seed_latents(range(first, first + n), G.z_dim), None, truncation_psi=PSI)

    def render(ws: torch.Tensor) -> np.ndarray:
        return np.concatenate([to_uint8(G.synthesis(ws[i:i + 16].float())) for i in range(0, len(ws), 16)])

    calib = ws_of(FIXTURE_SEEDS["calib"], s.fixture_calib)
    test = ws_of(FIXTURE_SEEDS["test"], s.fixture_images)
    originals = render(test)
    items = []
    for i, rgb in enumerate(originals):
        png = _png_bytes(rgb)
        items.append(Item(f"{name}-seed{FIXTURE_SEEDS['test'] + i}", rgb, len(png)))
    res = G.img_resolution
    result = SetResult(f"b-{name}", f"fixture generator {name} ({res}x{res}); codec-only round trip: W+ = mapping(z, "
                                    f"psi {PSI}) of seeds {FIXTURE_SEEDS['test']}+, codec fitted on {s.fixture_calib} "
                                    f"W+ of seeds {FIXTURE_SEEDS['calib']}+, compared with G(w) (no encoder exists "
                                    "for these networks)", items)
    bases = []
    for label, fields in latent_settings(s):
        if fields["profile"] == MATCHED_PROFILE:
            result.notes.append(f"latent {label}: not measured here: its allocation is measured through the generator "
                                "with the encoder's reconstructions at compress time; the codec alone resolves it to "
                                "the guide's table (balanced)")
            continue
        codec = LatentCodec.fit(calib, profile=fields["profile"])
        payloads = codec.compress(test)
        restored_all = render(codec.decompress(payloads))
        measures = tuple(measure(item, rec, len(p)) for item, rec, p in zip(items, restored_all, payloads))
        point = Point("latent", label, measures)
        result.points.append(point)
        bases.append((point, {item.name: rec for item, rec in zip(items, restored_all)}))
        print(f"  latent {label}: {point.mean_bytes:.0f} B/img, {point.mean_psnr:.2f} dB", flush=True)
    add_classical_and_residual(result, bases, s, measure)
    result.notes.append("hybrid: not measured on this set (no encoder for these generators, so compress cannot run)")
    return result


def _png_bytes(rgb: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


# -- summaries ------------------------------------------------------------------------------------
def method_of(point: Point) -> str:
    return "latent+residual" if point.curve.startswith("latent+residual") else point.curve


def cheapest(points: Iterable[Point], item: str, floor: float) -> Measure | None:
    best = None
    for p in points:
        for m in p.measures:
            if m.item == item and m.psnr >= floor and (best is None or m.bytes < best.bytes):
                best = m
    return best


def floor_rows(result: SetResult) -> list[list[str]]:
    methods: dict[str, list[Point]] = {}
    for p in result.points:
        methods.setdefault(method_of(p), []).append(p)
    rows = []
    for method, points in methods.items():
        cells = [method]
        for floor in FLOORS:
            chosen = [cheapest(points, item.name, floor) for item in result.items]
            reached = [m for m in chosen if m is not None]
            if len(reached) == len(chosen):
                cells.append(f"{np.mean([m.bytes for m in reached]):.0f}")
            else:
                cells.append(f"not reached ({len(reached)}/{len(chosen)} images)")
        rows.append(cells)
    return rows


def wins_rows(result: SetResult) -> tuple[list[list[str]], int]:
    """Per item: floors (1-dB grid) where latent+residual needs fewer bytes than the cheapest of
    latent, AVIF and WebP; and the number of items with any win."""
    lr = [p for p in result.points if method_of(p) == "latent+residual"]
    rivals = [p for p in result.points if p.curve in ("latent", "avif", "webp")]
    rows, items_won = [], 0
    for item in result.items:
        won = []
        for floor in WIN_FLOORS:
            a, b = cheapest(lr, item.name, floor), cheapest(rivals, item.name, floor)
            if a is not None and (b is None or a.bytes < b.bytes):
                won.append(floor)
        items_won += bool(won)
        cells = [item.name, item.size_text, ranges_text(won) or "none"]
        for floor in FLOORS:
            a, b = cheapest(lr, item.name, floor), cheapest(rivals, item.name, floor)
            cells.append(f"{a.bytes if a else '-'} / {b.bytes if b else '-'}")
        rows.append(cells)
    return rows, items_won


def ranges_text(values: Sequence[float]) -> str:
    parts: list[str] = []
    start: float | None = None
    prev = 0.0
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start:g}-{prev:g}" if start != prev else f"{start:g}")
            start = prev = v
    if start is not None:
        parts.append(f"{start:g}-{prev:g} dB" if start != prev else f"{start:g} dB")
    return ", ".join(parts)


# -- output ---------------------------------------------------------------------------------------
def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_db(x: float) -> str:
    return "identical" if math.isinf(x) else f"{x:.2f}"


def set_markdown(result: SetResult, lpips_on: bool) -> str:
    out = [f"## Set {result.key}: {result.description}", "",
           f"{len(result.items)} images: " + ", ".join(f"{i.name} ({i.size_text})" for i in result.items) + "; "
           f"{result.seconds:.0f} s.", ""]
    curves: dict[str, list[Point]] = {}
    for p in result.points:
        curves.setdefault(p.curve, []).append(p)
    header = ["setting", "B/image", "PSNR mean", "worst PSNR", "MS-SSIM mean"] + (["LPIPS mean"] if lpips_on else [])
    for curve, points in curves.items():
        out += [f"### {curve}", ""]
        rows = []
        for p in points:
            row = [p.setting + (f" ({p.extra})" if p.extra else ""), f"{p.mean_bytes:.0f}", fmt_db(p.mean_psnr),
                   fmt_db(p.worst_psnr), f"{p.mean_ms_ssim:.4f}"]
            if lpips_on:
                lp = p.mean_lpips
                row.append("-" if lp is None else f"{lp:.4f}")
            rows.append(row)
        out += [md_table(header, rows), ""]
    out += ["### bytes/image to reach a PSNR floor on every image", "",
            "Per image the smallest setting of the method meeting the floor, then the mean over images.", "",
            md_table(["method"] + [f">= {f:g} dB" for f in FLOORS], floor_rows(result)), ""]
    rows, won = wins_rows(result)
    out += ["### latent+residual against the cheapest of latent, AVIF, WebP (per image)", "",
            f"Floors of {WIN_FLOORS[0]:g}..{WIN_FLOORS[-1]:g} dB (1-dB steps) at which latent+residual needs fewer "
            f"bytes; then bytes latent+residual / cheapest rival at each floor. Images with any win: {won} of "
            f"{len(result.items)}.", "",
            md_table(["image", "size", "wins at", *[f"{f:g} dB: L+R / rival" for f in FLOORS]], rows), ""]
    if result.notes:
        out += ["Notes:", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(out)


CURVE_STYLE = {"latent": ("tab:red", "o"), "avif": ("tab:blue", "s"), "webp": ("tab:green", "^"),
               "jpeg": ("tab:gray", "v"), "latent+residual webp": ("tab:purple", "x"),
               "latent+residual avif": ("tab:orange", "+"), "hybrid": ("black", "D")}


def plot(results: Sequence[SetResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 8), squeeze=False)
    for col, result in enumerate(results):
        for row, (metric, label) in enumerate((("mean_psnr", "PSNR (dB), mean"), ("mean_ms_ssim", "MS-SSIM, mean"))):
            ax = axes[row][col]
            for curve, (color, marker) in CURVE_STYLE.items():
                pts = [p for p in result.points if p.curve == curve and math.isfinite(p.mean_psnr)]
                if curve.startswith("latent+residual"):  # one line per base latent setting
                    groups: dict[str, list[Point]] = {}
                    for p in pts:
                        groups.setdefault(p.setting.split(" + ")[0], []).append(p)
                    lines = list(groups.values())
                elif curve == "latent":  # the uniform sweep is a line; each profile a labelled marker
                    lines = [[p for p in pts if p.setting.startswith("uniform")]]
                    for p in pts:
                        if not p.setting.startswith("uniform"):
                            ax.plot([p.mean_bytes], [getattr(p, metric)], color=color, marker="*", markersize=8,
                                    linestyle="none")
                            ax.annotate(p.setting, (p.mean_bytes, getattr(p, metric)), fontsize=6,
                                        xytext=(3, -8), textcoords="offset points")
                else:
                    lines = [pts]
                for i, line in enumerate(lines):
                    line = sorted(line, key=lambda p: p.mean_bytes)
                    if line:
                        name = "latent (uniform bits; * = profiles)" if curve == "latent" else curve
                        ax.plot([p.mean_bytes for p in line], [getattr(p, metric) for p in line], color=color,
                                marker=marker, markersize=4, linewidth=1, label=name if i == 0 else None)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("bytes / image")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(f"set {result.key}", fontsize=10)
                for floor in FLOORS:
                    ax.axhline(floor, color="k", linewidth=0.5, linestyle=":")
        axes[0][col].legend(fontsize=7)
    fig.suptitle("restored vs original at the original size (benchmarks/rd.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------
def run_sets(keys: Sequence[str], s: Settings, measure: Measurer, work: Path) -> list[SetResult]:
    makers: dict[str, Callable[[], list[SetResult]]] = {
        "a": lambda: [generated_set(work, s, measure)],
        "b": lambda: [fixture_set(n, s, measure) for n in ("t64", "r64")],
        "c": lambda: [photo_set(work, s, measure)],
    }
    results = []
    for key in keys:
        if key not in makers:
            raise SystemExit(f"unknown set {key!r}; use any of a, b, c (e.g. --sets a,c)")
        print(f"== set {key}", flush=True)
        started = time.perf_counter()
        made = makers[key]()
        for r in made:
            r.seconds = (time.perf_counter() - started) / len(made)
        results.extend(made)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few images and settings (about a minute)")
    parser.add_argument("--out", type=Path, default=None, help="write rd.md and rd.png here")
    parser.add_argument("--sets", default="a,b,c", help="any of a (bundled generator), b (fixture generators), "
                                                        "c (real photos), comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    s = QUICK if args.quick else FULL
    started = time.perf_counter()
    measure = Measurer()
    keys = [k.strip() for k in args.sets.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(prefix="sg3-rd-") as tmp:
        results = run_sets(keys, s, measure, Path(tmp))
    seconds = time.perf_counter() - started
    lpips_on = measure.perceptual is not None
    command = "python benchmarks/rd.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = [
        "# Rate-distortion: bytes/image against fidelity, restored vs original at the original size", "",
        f"Command: `{command.strip()}`; {seconds:.0f} s on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {args.threads} torch thread(s).", "",
        f"Fidelity: `sg3archive.metrics.fidelity.measure_fidelity` (PSNR over all pixels, peak 255; MS-SSIM). "
        f"LPIPS: {measure.lpips_status}. PSNR means cap identical images at 99 dB.", "",
        "Bytes: latent = the row's payload; classical = the encoded file; latent+residual = payload + residual file; "
        "hybrid = what the row stores (payload + image_data, whatever its representation); original = the source file.", "",
    ]
    text = "\n".join(head + [set_markdown(r, lpips_on) for r in results])
    print()
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rd.md").write_text(text + "\n")
        plot(results, args.out / "rd.png")
        print(f"wrote {args.out / 'rd.md'} and {args.out / 'rd.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
