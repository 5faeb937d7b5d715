"""benchmarks/rd.py runs end to end (``--quick``) and its figures are sane; tests/photos.py gives
real photos at the sizes and file types asked for, the same pixels every time."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from photos import PHOTOS, PhotoSpec, photo, write_photos
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _tables(markdown: str) -> dict[str, dict[str, list[dict[str, str]]]]:
    """``{set key: {curve: [row as {column: cell}]}}`` from rd.md."""
    sets: dict[str, dict[str, list[dict[str, str]]]] = {}
    for section in re.split(r"^## Set ", markdown, flags=re.M)[1:]:
        key = section.split(":", 1)[0]
        curves: dict[str, list[dict[str, str]]] = {}
        for part in re.split(r"^### ", section, flags=re.M)[1:]:
            title, _, body = part.partition("\n")
            lines = [line for line in body.splitlines() if line.startswith("|")]
            if len(lines) < 2:
                continue
            header = [c.strip() for c in lines[0].strip("|").split("|")]
            curves[title.strip()] = [dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                     for line in lines[2:]]
        sets[key] = curves
    return sets


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("rd")
    env = {**os.environ, "SG3ARCHIVE_LPIPS_DOWNLOAD": "0"}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rd.py"), "--quick", "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return res, out


def test_quick_benchmark_writes_tables_and_plot(quick_run) -> None:
    res, out = quick_run
    assert res.returncode == 0, res.stderr[-3000:]
    with Image.open(out / "rd.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
    tables = _tables((out / "rd.md").read_text())
    assert set(tables) == {"a", "b-t64", "b-r64", "c"}
    for key, curves in tables.items():
        assert {"latent", "avif", "webp", "jpeg", "original"} <= set(curves), key
        assert any(c.startswith("latent+residual") for c in curves), key
        floors = curves["bytes/image to reach a PSNR floor on every image"]
        assert {r["method"] for r in floors} >= {"latent", "avif", "webp", "original"}
        assert all(r["method"] == "original" or r[">= 25 dB"] for r in floors)
        assert curves["original"][0]["PSNR mean"] == "identical"


def test_quick_benchmark_numbers_are_sane(quick_run) -> None:
    res, out = quick_run
    assert res.returncode == 0, res.stderr[-3000:]
    tables = _tables((out / "rd.md").read_text())
    for key, curves in tables.items():
        for codec in ("avif", "webp"):
            rows = sorted(curves[codec], key=lambda r: int(r["setting"].removeprefix("q")))
            psnr = [float(r["PSNR mean"]) for r in rows]
            size = [float(r["B/image"]) for r in rows]
            assert psnr == sorted(psnr) and psnr[-1] > psnr[0] + 3, (key, codec, psnr)  # quality buys fidelity
            assert size == sorted(size) and size[-1] > size[0], (key, codec, size)  # ... and costs bytes
            assert 20 < psnr[-1] < 70, (key, codec, psnr)
        for curve, rows in curves.items():
            for r in rows:
                if "MS-SSIM mean" in r:
                    assert 0.0 <= float(r["MS-SSIM mean"]) <= 1.0, (key, curve, r)
                if "PSNR mean" in r and r["PSNR mean"] != "identical":
                    assert 5 < float(r["PSNR mean"]) < 100 and float(r["worst PSNR"]) <= float(r["PSNR mean"]) + 1e-9
                    assert float(r["B/image"]) > 0
    # Photos are far from the bundled generator's textures: its latent restoration is poor there and
    # a classical codec at high quality is close; on its own images it does much better.
    photo_latent = max(float(r["PSNR mean"]) for r in tables["c"]["latent"])
    own_latent = max(float(r["PSNR mean"]) for r in tables["a"]["latent"])
    assert photo_latent < own_latent
    assert float(tables["c"]["avif"][-1]["PSNR mean"]) > 30


def test_photo_is_deterministic_and_sized() -> None:
    a = photo("coffee", (257, 129))
    b = photo("coffee", (257, 129))
    assert a.mode == "RGB" and a.size == (257, 129)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    full = photo("chelsea")
    assert full.size == (451, 300)
    tall = np.asarray(photo("rocket", (30, 100)), dtype=np.float64)
    assert tall.shape == (100, 30, 3) and tall.std() > 10  # a real picture, not a flat fill
    with pytest.raises(ValueError, match="unknown photo"):
        photo("motorcycle_left")  # not offered: its licence is not public domain / CC0


def test_write_photos_writes_every_size_and_type(tmp_path) -> None:
    specs: list[PhotoSpec | tuple] = [PhotoSpec("astronaut", (512, 384), "png"), PhotoSpec("rocket", (300, 1000), "jpg"),
             ("chelsea", (1000, 300), "webp"), PhotoSpec("retina", (257, 129), "png")]
    paths = write_photos(tmp_path, specs)
    assert [p.name for p in paths] == ["astronaut_512x384.png", "rocket_300x1000.jpg", "chelsea_1000x300.webp",
                                       "retina_257x129.png"]
    for path, fmt, size in zip(paths, ("PNG", "JPEG", "WEBP", "PNG"), ((512, 384), (300, 1000), (1000, 300), (257, 129))):
        with Image.open(path) as im:
            assert (im.format, im.size, im.mode) == (fmt, size, "RGB")
    # PNG keeps the pixels exactly; JPEG at quality 95 stays close to them.
    assert np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(photo("astronaut", (512, 384))))
    jpeg = np.asarray(Image.open(paths[1]), dtype=np.float64)
    mse = float(((jpeg - np.asarray(photo("rocket", (300, 1000)), dtype=np.float64)) ** 2).mean())
    assert 10 * math.log10(255**2 / mse) > 35


def test_every_offered_photo_is_public_domain_or_cc0() -> None:
    assert all("public domain" in p.licence or p.licence.startswith("CC0") for p in PHOTOS.values())
    for name in PHOTOS:
        assert photo(name, (16, 16)).size == (16, 16)
