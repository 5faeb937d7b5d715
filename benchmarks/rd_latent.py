"""The latent path's rate–distortion curve: rate–distortion refinement against the pre-refinement
algorithm (encoder, plain pixel-loss refinement, the codec fitted on those latents), measured
restored-vs-original with ``sg3archive.metrics.fidelity.measure_fidelity`` (PSNR, MS-SSIM, and
LPIPS when its weights are provisioned), in one process.

Sets:

    a   the bundled generator's own images, ``sg3archive generate --seeds 700000-700007 --trunc 0.7``
        (held out: far from the encoder's training seeds), 64x64 PNG files, i.e. their original size.
        new:   ``compress --representations latent --quality none --profile B --refine-steps S
               --lambda L`` then ``restore --size original`` (the library calls the CLI makes).
        today: the algorithm before rate–distortion refinement, in process: W+ from the encoder,
               ``refine_latents`` (pixel loss, S Adam steps) for S > 0, the codec fitted on the
               same kind of latents of the collection's images plus 512 mapping samples, as
               compress did.
    t64, r64  the reference fixture generators: images G(w) of W+ = mapping(z, psi 0.7) at seeds
        200000+ (their original size). No encoder is shipped for them, so one is trained here
        (latent loss, 300 steps, seed 0); today and rd then run as for set a, in process (``rd_refine``
        with a codec fitted on the encoder's latents plus 512 mapping samples, as compress fits it).
        ideal (listed, not compared): the codec's round trip of the true W+, codec fitted on 512 W+
        of seeds 100000+ — what a perfect encoder would give.

Summary: each curve's best PSNR (upper frontier, interpolated in log bytes) and its LPIPS at 150,
300 and 600 B/image, and the difference.

    python benchmarks/rd_latent.py                 # all sets (about 20 min on 2 cores)
    python benchmarks/rd_latent.py --quick         # 2 images, a few settings (about 2 min)
    python benchmarks/rd_latent.py --sets t64,r64 --rd-bits 2,3,4,5,6   # the fixtures, rd up to 6 bits
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rd import (  # noqa: E402  (benchmarks/rd.py: measuring, archives, tables)
    FIXTURES,
    Item,
    Measurer,
    Point,
    _png_bytes,
    items_in,
    library_round_trip,
    md_table,
)

RATES = (150.0, 300.0, 600.0)
HELD_OUT_SEED, PSI = 700_000, 0.7
MAPPING_CALIBRATION, MAPPING_SEED = 512, 0  # sg3archive.pipeline.calibrate's mapping samples
FIXTURE_SEEDS = {"calib": 100_000, "test": 200_000}


@dataclass(frozen=True)
class Settings:
    images: int
    steps: int
    today_bits: tuple[int, ...]
    new_bits: tuple[int, ...]
    lambdas: tuple[float, ...]
    fixture_encoder_steps: int


FULL = Settings(images=8, steps=30, today_bits=(3, 4, 5, 6, 7, 8), new_bits=(2, 3, 4, 5), lambdas=(0.01,),
                fixture_encoder_steps=300)
QUICK = Settings(images=2, steps=5, today_bits=(3, 4), new_bits=(3,), lambdas=(0.01,), fixture_encoder_steps=10)


@dataclass
class Curve:
    name: str
    points: list[Point]
    seconds_per_image: dict[str, float]


def _tensor(items: Sequence[Item]) -> torch.Tensor:
    x = torch.from_numpy(np.stack([i.rgb for i in items])).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def _uint8(images: torch.Tensor) -> np.ndarray:
    from sg3archive.images import to_uint8

    return to_uint8(images)


def today_curve(items: Sequence[Item], s: Settings, measure: Measurer, G: Any = None,
                encoder: Any = None) -> Curve:
    """Before rate–distortion refinement (module docstring); the bundled pack unless given."""
    from sg3archive.codec import LatentCodec
    from sg3archive.encoding import encode_images, refine_latents
    from sg3archive.pipeline.session import cache
    from sg3archive.training.data import SyntheticPairs

    if G is None:
        models = cache.models(None, None, "cpu")
        G, encoder = models.G, models.encoder
    x = _tensor(items)
    mapping = SyntheticPairs(G).ws(MAPPING_CALIBRATION, torch.Generator().manual_seed(MAPPING_SEED))
    points, timing = [], {}
    for steps in (0, s.steps):
        start = time.perf_counter()
        ws = encode_images(encoder, x)
        if steps:
            ws = refine_latents(G, ws, x, steps=steps)
        timing[f"encoder + {steps} pixel-loss steps" if steps else "encoder"] = (time.perf_counter() - start) / len(x)
        for bits in s.today_bits:
            codec = LatentCodec.fit(torch.cat([ws, mapping]), bits)
            payloads = codec.compress(ws)
            with torch.no_grad():
                restored = _uint8(G.synthesis(codec.decompress(payloads)))
            measures = tuple(measure(i, r, len(p)) for i, r, p in zip(items, restored, payloads))
            points.append(Point("today", f"{bits} bits, refine {steps}", measures))
            _say(points[-1])
    return Curve("today", points, timing)


def new_curve(folder: Path, items: Sequence[Item], s: Settings, measure: Measurer, work: Path) -> Curve:
    """Set a, through compress + restore with rate–distortion refinement."""
    points, timing = [], {}
    for bits in s.new_bits:
        for lam in s.lambdas:
            slug = f"b{bits}-l{lam}"
            start = time.perf_counter()
            point, _ = library_round_trip(folder, items, work, slug, "rd", f"{bits} bits, refine {s.steps}, λ {lam}",
                                          {"profile": bits, "refine_steps": s.steps, "rd_lambda": lam}, measure)
            timing[point.setting] = (time.perf_counter() - start) / len(items)
            points.append(point)
            _say(point)
    return Curve("rd", points, timing)


def fixture_encoder(G: Any, steps: int, work: Path) -> Any:
    """A quickly trained encoder for a fixture generator (none is shipped): latent loss on a pool of
    512 synthetic pairs (``TrainJob`` defaults otherwise, seed 0)."""
    from sg3archive.training import TrainConfig, train_encoder

    config = TrainConfig(encoder="hierarchical", width=0.25, steps=steps, batch_size=16, lr=1e-3, lpips_net=None,
                         image_every=0, synthetic_pool=512, log_every=max(1, steps), sample_every=0,
                         checkpoint_every=max(1, steps), seed=0)
    return train_encoder(G, config, work, progress=False).encoder.eval()


def fixture_curves(name: str, s: Settings, measure: Measurer, work: Path) -> tuple[list[Item], Curve, Curve, Curve]:
    """Set t64/r64: ``(items, today, rd, ideal)``. today and rd as for set a, in process, from an
    encoder trained here (:func:`fixture_encoder`); ideal: the codec's round trip of the true W+."""
    import sg3archive
    from sg3archive.codec import LatentCodec
    from sg3archive.encoding import encode_images
    from sg3archive.refinement import rd_refine
    from sg3archive.sampling import seed_latents
    from sg3archive.training.data import SyntheticPairs

    G: Any = sg3archive.load_network(str(FIXTURES / name / "network-snapshot.pkl"))
    with torch.no_grad():
        calib = G.mapping(seed_latents(range(FIXTURE_SEEDS["calib"], FIXTURE_SEEDS["calib"] + MAPPING_CALIBRATION),
                                       G.z_dim), None, truncation_psi=PSI)
        ws = G.mapping(seed_latents(range(FIXTURE_SEEDS["test"], FIXTURE_SEEDS["test"] + s.images), G.z_dim), None,
                       truncation_psi=PSI)
        originals = _uint8(G.synthesis(ws))
    items = [Item(f"{name}-seed{FIXTURE_SEEDS['test'] + i}", rgb, len(_png_bytes(rgb))) for i, rgb in enumerate(originals)]
    x = _tensor(items)
    encoder = fixture_encoder(G, s.fixture_encoder_steps, work / f"encoder-{name}")
    today = today_curve(items, s, measure, G, encoder)
    new, ideal = Curve("rd", [], {}), Curve("ideal", [], {})
    mapping = SyntheticPairs(G).ws(MAPPING_CALIBRATION, torch.Generator().manual_seed(MAPPING_SEED))
    ws_enc = encode_images(encoder, x)
    for bits in s.new_bits:
        codec = LatentCodec.fit(torch.cat([ws_enc, mapping]), bits)  # as compress fits it
        for lam in s.lambdas:
            start = time.perf_counter()
            refined = rd_refine(G, encode_images(encoder, x), x, codec, steps=s.steps, rd_lambda=lam).ws
            label = f"{bits} bits, refine {s.steps}, λ {lam}"
            new.seconds_per_image[label] = (time.perf_counter() - start) / len(items)
            new.points.append(_coded_point("rd", label, G, codec, refined, items, measure))
    for bits in s.today_bits:
        ideal.points.append(_coded_point("ideal", f"{bits} bits, true W+", G, LatentCodec.fit(calib, bits), ws, items,
                                         measure))
    return items, today, new, ideal


def _coded_point(curve: str, label: str, G: Any, codec: Any, ws: torch.Tensor, items: Sequence[Item],
                 measure: Measurer) -> Point:
    payloads = codec.compress(ws)
    with torch.no_grad():
        restored = _uint8(G.synthesis(codec.decompress(payloads)))
    point = Point(curve, label, tuple(measure(i, r, len(p)) for i, r, p in zip(items, restored, payloads)))
    _say(point)
    return point


def _say(point: Point) -> None:
    lp = point.mean_lpips
    print(f"  {point.curve:6s} {point.setting:32s} {point.mean_bytes:7.1f} B/img  {point.mean_psnr:6.2f} dB"
          + ("" if lp is None else f"  LPIPS {lp:.4f}"), flush=True)


def frontier_at(points: Sequence[Point], rate: float) -> tuple[float, float | None] | None:
    """``(PSNR, LPIPS)`` of the curve's best PSNR frontier at ``rate`` B/image, interpolated
    linearly in log bytes between its two neighbouring frontier points (None outside its range)."""
    frontier: list[Point] = []
    for p in sorted(points, key=lambda p: p.mean_bytes):
        if not frontier or p.mean_psnr > frontier[-1].mean_psnr:
            frontier.append(p)
    for lo, hi in zip(frontier, frontier[1:]):
        if lo.mean_bytes <= rate <= hi.mean_bytes:
            t = (math.log(rate) - math.log(lo.mean_bytes)) / (math.log(hi.mean_bytes) - math.log(lo.mean_bytes))
            lpips = None
            if lo.mean_lpips is not None and hi.mean_lpips is not None:
                lpips = lo.mean_lpips + t * (hi.mean_lpips - lo.mean_lpips)
            return lo.mean_psnr + t * (hi.mean_psnr - lo.mean_psnr), lpips
    if frontier and rate >= frontier[-1].mean_bytes:  # past the last point: the curve does not fall
        return frontier[-1].mean_psnr, frontier[-1].mean_lpips
    return None


def summary_rows(today: Curve, new: Curve) -> list[list[str]]:
    rows = []
    for rate in RATES:
        a, b = frontier_at(today.points, rate), frontier_at(new.points, rate)

        def cell(v: tuple[float, float | None] | None, i: int) -> str:
            if v is None or v[i] is None:
                return "–"
            return f"{v[i]:.2f}" if i == 0 else f"{v[i]:.4f}"

        gain = f"{b[0] - a[0]:+.2f}" if a and b else "–"
        rows.append([f"{rate:.0f}", cell(a, 0), cell(b, 0), gain, cell(a, 1), cell(b, 1)])
    return rows


def points_table(curves: Sequence[Curve]) -> str:
    rows = []
    for c in curves:
        for p in c.points:
            lp = p.mean_lpips
            rows.append([c.name, p.setting, f"{p.mean_bytes:.1f}", f"{p.mean_psnr:.2f}", f"{p.mean_ms_ssim:.4f}",
                         "–" if lp is None else f"{lp:.4f}"])
    return md_table(["curve", "setting", "B/image", "PSNR (dB)", "MS-SSIM", "LPIPS"], rows)


def report(name: str, today: Curve, new: Curve, *extra: Curve) -> str:
    header = ["B/image", "today PSNR", "rd PSNR", "gain (dB)", "today LPIPS", "rd LPIPS"]
    timing = md_table(["curve", "setting", "encode s/image"],
                      [[c.name, k, f"{v:.2f}"] for c in (today, new) for k, v in c.seconds_per_image.items()])
    return (f"### set {name}\n\n{md_table(header, summary_rows(today, new))}\n\n"
            f"{points_table([today, new, *extra])}\n\n{timing}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 images and a few settings")
    parser.add_argument("--sets", default="a,t64,r64", help="comma-separated: a, t64, r64")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--rd-bits", default=None, help="comma-separated codec bits of the rd curve (default 2,3,4,5)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.rd_bits:
        s = dataclasses.replace(s, new_bits=tuple(int(b) for b in args.rd_bits.split(",") if b.strip()))
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    measure = Measurer()
    print(f"LPIPS: {measure.lpips_status}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for key in [k.strip() for k in args.sets.split(",") if k.strip()]:
            print(f"set {key}", flush=True)
            if key == "a":
                from sg3archive.cli import main as cli

                folder = work / "a-images"
                seeds = f"{HELD_OUT_SEED}-{HELD_OUT_SEED + s.images - 1}"
                cli(["generate", "--seeds", seeds, "--trunc", str(PSI), "--out", str(folder), "--no-grid",
                     "--device", "cpu"], standalone_mode=False)
                items = items_in(folder)
                today, new = today_curve(items, s, measure), new_curve(folder, items, s, measure, work)
                parts.append(report(key, today, new))
            elif key in ("t64", "r64"):
                items, today, new, ideal = fixture_curves(key, s, measure, work)
                parts.append(report(key, today, new, ideal))
            else:
                parser.error(f"unknown set {key!r}; use a, t64, r64")
            print(parts[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
