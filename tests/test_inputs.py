"""The input side of compression (``sg3archive.images``): listing sources, reading bytes,
safe decoding, fitting to the generator's square and back, tensor conversion.

Every image is a real file written with Pillow (or Pillow's output patched by hand: truncated,
a forged IHDR); folders are real folders under ``tmp_path`` or fsspec's in-memory filesystem.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import (
    DecodedImage,
    FitInfo,
    ImageRejected,
    decode_image,
    fit_to_square,
    from_tensor,
    iter_sources,
    read_bytes,
    sha256_hex,
    to_tensor,
    unfit,
)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth(height: int, width: int) -> np.ndarray:
    """A low-frequency colour image (resizing it loses almost nothing)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        128 + 100 * np.sin(2 * np.pi * x / width * 1.5),
        128 + 100 * np.cos(2 * np.pi * y / height * 1.2),
        128 + 90 * np.sin(2 * np.pi * (x + y) / (width + height) * 2),
    ]
    return np.rint(np.stack(channels, axis=2)).astype(np.uint8)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB (plain numpy: importing torchmetrics would double this file's time)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


def file_url(path: Path) -> str:
    return fsspec.filesystem("file").unstrip_protocol(str(path))


# -- listing ----------------------------------------------------------------------------------
@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """A folder of images at several depths, with non-images and hidden files mixed in."""
    root = tmp_path / "photos"
    tiny = encode(Image.new("RGB", (2, 2)), "PNG")
    for rel in [
        "b.png", "a.JPG", "B2.jpeg", "notes.txt", "png", "README", ".hidden.png",
        "sub/c.webp", "sub/d.png", "sub/._d.jpg", "sub/deep/e.tif", "sub/deep/f.TIFF",
        "a_dir/g.gif", "a_dir/h.avif", "a_dir/i.bmp", "a_dir/skip.psd", ".git/j.png",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tiny)
    return root


def test_listing_walks_folders_in_a_fixed_order_keeping_image_suffixes(nested: Path) -> None:
    sources = iter_sources(str(nested))
    assert isinstance(sources, Iterator)  # streamed, not a list
    expected = [
        "B2.jpeg", "a.JPG", "b.png",  # a folder's own files first, by code point
        "a_dir/g.gif", "a_dir/h.avif", "a_dir/i.bmp",  # then subfolders in sorted order, depth first
        "sub/c.webp", "sub/d.png", "sub/deep/e.tif", "sub/deep/f.TIFF",
    ]
    assert list(sources) == [file_url(nested / rel) for rel in expected]
    assert list(iter_sources(file_url(nested))) == [file_url(nested / rel) for rel in expected]
    assert list(iter_sources(str(nested), recursive=False)) == [file_url(nested / r) for r in expected[:3]]


def test_listing_with_a_glob_pattern(nested: Path) -> None:
    def names(pattern: str) -> list[str]:
        return [url.split("/photos/", 1)[1] for url in iter_sources(str(nested), pattern=pattern)]

    assert names("**/*.png") == ["b.png", "sub/d.png"]
    assert names("*.png") == ["b.png"]
    assert names("sub/*") == ["sub/c.webp", "sub/d.png"]
    assert names("sub/**") == ["sub/c.webp", "sub/d.png", "sub/deep/e.tif", "sub/deep/f.TIFF"]
    assert names("**/[ab]*") == ["a.JPG", "b.png"]
    assert names("[ab]*/*") == ["a_dir/g.gif", "a_dir/h.avif", "a_dir/i.bmp", "a_dir/skip.psd"]
    assert names("**/[!a-z]*") == ["B2.jpeg", "README"]
    assert names("**/notes.tx?") == ["notes.txt"]  # a pattern overrides the suffix filter
    assert names("**/*.jpg") == []  # case-sensitive; hidden ._d.jpg skipped


def test_listing_a_single_file_and_a_memory_prefix(nested: Path) -> None:
    assert list(iter_sources(str(nested / "sub" / "c.webp"))) == [file_url(nested / "sub" / "c.webp")]
    base = f"memory://inputs-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for rel in ["z.png", "x/y.jpg", "x/w.txt"]:
        fs.pipe(f"{base}/{rel}", b"not really an image")
    try:
        root = base.replace("memory://", "memory:///")  # the memory filesystem's paths start with "/"
        assert list(iter_sources(base)) == [f"{root}/z.png", f"{root}/x/y.jpg"]
    finally:
        fs.rm(base, recursive=True)


def test_listing_and_reading_on_s3() -> None:
    """The same listing rules against an S3 server (moto), through ``storage_options``."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {
            "key": "test",
            "secret": "test",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"},
        }
        fs = fsspec.filesystem("s3", **options)
        fs.mkdir("inputs", region_name="eu-west-1")  # us-east-1 is refused by moto (ENVIRONMENT.md)
        png = encode(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG")
        for key in ["b.png", "a/x.jpg", "a/notes.txt", ".hidden.png", "a/z/w.webp"]:
            fs.pipe(f"inputs/data/{key}", png)
        fs.pipe("inputs/list.txt", b"# two entries\ndata/b.png\n\ns3://other/k.png\n")
        urls = list(iter_sources("s3://inputs/data/", storage_options=options))
        assert urls == ["s3://inputs/data/b.png", "s3://inputs/data/a/x.jpg", "s3://inputs/data/a/z/w.webp"]
        assert list(iter_sources("s3://inputs/list.txt", storage_options=options)) == [
            "s3://inputs/data/b.png",
            "s3://other/k.png",
        ]
        fs.pipe("inputs/data/c.png", png)  # written after the first listing: must be seen
        assert list(iter_sources("s3://inputs/data", recursive=False, storage_options=options)) == [
            "s3://inputs/data/b.png",
            "s3://inputs/data/c.png",
        ]
        with pytest.raises(FileNotFoundError, match="not found"):
            iter_sources("s3://inputs/nothing-here", storage_options=options)
        data = read_bytes(urls[0], storage_options=options)
        assert decode_image(data, uri=urls[0]).rgb[1, 2].tolist() == [1, 2, 3]
        with pytest.raises(ImageRejected, match="max_bytes"):
            read_bytes(urls[0], storage_options=options, max_bytes=len(data) - 1)
    finally:
        server.stop()


def test_uri_list_skips_blanks_and_comments_and_resolves_relative_entries(tmp_path: Path) -> None:
    lines = [
        "# inputs for run 7",
        "",
        "imgs/a.png",
        "   ",
        "  s3://bucket/key with space.jpg  ",
        "#imgs/commented-out.png",
        "/abs/b.webp",
        "../up/c.png",
        "memory://bucket/d.png",
    ]
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())  # BOM and CRLF, as editors write
    expected = [
        file_url(tmp_path / "lists" / "imgs" / "a.png"),
        "s3://bucket/key with space.jpg",
        "file:///abs/b.webp",
        file_url(tmp_path / "up" / "c.png"),
        "memory://bucket/d.png",
    ]
    assert list(iter_sources(str(listing))) == expected
    other = tmp_path / "lists" / "inputs.csv"
    other.write_text("x.png\n")
    assert list(iter_sources(str(other), uri_list=True)) == [file_url(tmp_path / "lists" / "x.png")]
    assert list(iter_sources(str(other))) == [file_url(other)]  # without uri_list: one (non-image) file


def test_missing_sources_raise_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        iter_sources(str(tmp_path / "no-such-folder"))
    with pytest.raises(FileNotFoundError, match="URI list"):
        iter_sources(str(tmp_path / "no-such-list.lst"))
    with pytest.raises(FileNotFoundError, match="not found"):
        iter_sources(f"memory://missing-{uuid.uuid4().hex}/prefix")


# -- reading ----------------------------------------------------------------------------------
def test_read_bytes_and_its_size_limit(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    path = tmp_path / "blob.png"
    path.write_bytes(data)
    assert read_bytes(str(path)) == data
    assert read_bytes(file_url(path), max_bytes=len(data)) == data
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest() and len(sha256_hex(b"")) == 64
    with pytest.raises(ImageRejected, match="over the 9.77 KiB limit") as info:
        read_bytes(str(path), max_bytes=10_000)
    assert info.value.uri == str(path)
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_bytes(str(tmp_path / "gone.png"))


# -- decoding ---------------------------------------------------------------------------------
def test_rgb_png_decodes_exactly() -> None:
    rgb = noise(17, 23)
    out = decode_image(encode(Image.fromarray(rgb), "PNG"))
    assert isinstance(out, DecodedImage)
    assert (out.width, out.height, out.mode, out.format, out.had_alpha, out.notes) == (23, 17, "RGB", "PNG", False, [])
    assert out.rgb.dtype == np.uint8 and np.array_equal(out.rgb, rgb)


@pytest.mark.parametrize("fmt, kwargs", [("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_other_lossless_formats_decode_exactly(fmt: str, kwargs: dict) -> None:
    rgb = noise(9, 14, seed=3)
    out = decode_image(encode(Image.fromarray(rgb), fmt, **kwargs))
    assert out.format == fmt and np.array_equal(out.rgb, rgb)


def test_jpeg_exif_orientation_6_is_applied() -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # white stripe on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    out = decode_image(encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95))
    assert (out.width, out.height) == (20, 40) and out.rgb.shape == (40, 20, 3)
    assert out.rgb[:8].min() > 200 and out.rgb[12:].max() < 50  # the left edge is now the top
    assert out.notes == ["EXIF orientation 6 applied"]


def test_grayscale_is_replicated() -> None:
    gray = noise(6, 7)[:, :, 0]
    out = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.mode == "L" and out.rgb.shape == (6, 7, 3)
    assert all(np.array_equal(out.rgb[:, :, c], gray) for c in range(3))


def test_la_alpha_is_composited_over_white() -> None:
    la = np.array([[[100, 0], [100, 255], [100, 128]]], np.uint8)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    expected = [255, 100, (100 * 128 + 255 * 127 + 127) // 255]
    assert out.had_alpha and out.mode == "LA"
    assert out.rgb[0, :, 0].tolist() == expected and np.array_equal(out.rgb[..., 0], out.rgb[..., 2])


def test_rgba_transparent_pixels_become_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black
    rgba[0, 1] = (10, 20, 30, 255)
    rgba[1, :] = (200, 0, 0, 64)
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.had_alpha and out.notes == ["alpha composited over white"]
    assert out.rgb[0, 0].tolist() == [255, 255, 255]
    assert out.rgb[0, 1].tolist() == [10, 20, 30]
    assert out.rgb[1, 0].tolist() == [(200 * 64 + 255 * 191 + 127) // 255, 191, 191]


def test_palette_with_transparency() -> None:
    pal = Image.new("P", (3, 2))
    pal.putpalette([0, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putpixel((1, 0), 1)
    pal.putpixel((2, 1), 2)
    out = decode_image(encode(pal, "PNG", transparency=0))
    assert out.mode == "P" and out.had_alpha
    assert out.rgb[0, 0].tolist() == [255, 255, 255]  # index 0 is the transparent one
    assert out.rgb[0, 1].tolist() == [0, 255, 0] and out.rgb[1, 2].tolist() == [0, 0, 255]
    plain = decode_image(encode(pal, "PNG"))
    assert not plain.had_alpha and plain.rgb[0, 0].tolist() == [0, 0, 0] and plain.notes == ["palette expanded to RGB"]


def test_cmyk_jpeg_uses_pillows_conversion() -> None:
    out = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert out.mode == "CMYK" and out.format == "JPEG"
    assert np.abs(out.rgb.astype(int) - [255, 0, 0]).max() <= 3  # full magenta + yellow = red
    assert any("CMYK" in note for note in out.notes)


def test_sixteen_bit_png_is_scaled_by_shifting() -> None:
    values = np.array([[0, 255, 256, 51_200, 65_535]], np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    assert out.mode == "I;16" and out.rgb[0, :, 1].tolist() == [0, 0, 1, 200, 255]


def test_thirty_two_bit_int_and_float_tiffs() -> None:
    ints = decode_image(encode(Image.fromarray(np.array([[-5, 512, 70_000]], np.int32), "I"), "TIFF"))
    assert ints.mode == "I" and ints.rgb[0, :, 0].tolist() == [0, 2, 255]
    floats = decode_image(encode(Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32), "F"), "TIFF"))
    assert floats.mode == "F" and floats.rgb[0, :, 0].tolist() == [0, 128, 255, 0]
    assert "float values read as range [0, 1], scaled to 8-bit" in floats.notes


def test_one_bit_is_black_and_white() -> None:
    bits = Image.new("1", (4, 2), 0)
    bits.putpixel((1, 0), 1)
    out = decode_image(encode(bits, "PNG"))
    assert out.mode == "1" and out.rgb[0, :, 2].tolist() == [0, 255, 0, 0] and out.rgb[1].max() == 0


def test_animated_gif_keeps_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    out = decode_image(encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0))
    assert out.format == "GIF" and out.rgb.shape == (6, 8, 3)
    assert out.rgb.reshape(-1, 3).tolist() == [[255, 0, 0]] * 48
    assert any("first frame" in note for note in out.notes)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_rejected(fmt: str) -> None:
    data = encode(Image.fromarray(noise(64, 80)), fmt)
    with pytest.raises(ImageRejected, match="truncated") as info:
        decode_image(data[: len(data) // 2], uri="s3://b/cut.img")
    assert info.value.uri == "s3://b/cut.img" and "\n" not in info.value.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unreadable_inputs_are_rejected_with_a_reason() -> None:
    with pytest.raises(ImageRejected, match=r"empty file \(0 bytes\)"):
        decode_image(b"")
    with pytest.raises(ImageRejected, match="not a readable image"):
        decode_image(b"hello, this is a text file\n")
    with pytest.raises(ImageRejected, match="not a readable image"):  # Ghostscript is never invoked
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert issubclass(ImageRejected, Sg3ArchiveError)


def test_refuses_to_run_with_truncated_loading_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(Sg3ArchiveError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"))


def forged_png(width: int, height: int) -> bytes:
    """A real 4x4 PNG whose IHDR claims another size (CRC fixed, so the header is valid)."""
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


def test_huge_dimensions_are_rejected_from_the_header() -> None:
    start = time.perf_counter()
    with pytest.raises(ImageRejected, match=r"9000x9000 = 81 Mpx, over the 64 Mpx limit \(max_pixels\)"):
        decode_image(forged_png(9000, 9000))
    with pytest.raises(ImageRejected, match="decompression-bomb"):  # Pillow's guard, still in force
        decode_image(forged_png(100_000, 100_000), max_pixels=10**11)
    with pytest.raises(ImageRejected, match="decompression-bomb"):  # its warning level too
        decode_image(forged_png(10_000, 10_000), max_pixels=10**11)
    assert time.perf_counter() - start < 1.0  # no pixel buffer was ever allocated
    with pytest.raises(ImageRejected, match=r"17x23 = 391 px, over the 100 px limit"):
        decode_image(encode(Image.fromarray(noise(23, 17)), "PNG"), max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # left as Pillow ships it


# -- fitting ----------------------------------------------------------------------------------
def test_crop_round_trip_restores_the_centre_and_replicates_edges() -> None:
    rgb = smooth(90, 150)
    square, info = fit_to_square(rgb, 64, "crop")
    assert square.shape == (64, 64, 3) and square.dtype == np.uint8
    assert info == FitInfo(width=150, height=90, mode="crop", box=(30, 0, 120, 90), resolution=64)
    back = unfit(square, info)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    assert psnr_db(back[:, 30:120], rgb[:, 30:120]) > 35
    assert np.array_equal(back[:, :30], np.repeat(back[:, 30:31], 30, axis=1))
    assert np.array_equal(back[:, 120:], np.repeat(back[:, 119:120], 30, axis=1))


def test_pad_round_trip_is_close() -> None:
    rgb = smooth(101, 57)  # odd sizes: the pad is split unevenly
    square, info = fit_to_square(rgb, 64, "pad")
    assert square.shape == (64, 64, 3)
    assert info.box == (-22, 0, 79, 101)
    assert np.array_equal(fit_to_square(rgb, 101, "pad")[0][:, :22], np.repeat(rgb[:, :1], 22, axis=1))  # edge fill
    back = unfit(square, info)
    assert back.shape == rgb.shape and psnr_db(back, rgb) > 35


def test_stretch_round_trip_and_identity() -> None:
    rgb = smooth(40, 120)
    square, info = fit_to_square(rgb, 48, "stretch")
    assert square.shape == (48, 48, 3) and info.box == (0, 0, 120, 40)
    back = unfit(square, info)
    assert back.shape == rgb.shape and psnr_db(back, rgb) > 35
    exact = noise(32, 32)
    for mode in ("crop", "pad", "stretch"):
        same, info = fit_to_square(exact, 32, mode)
        assert np.array_equal(same, exact) and np.array_equal(unfit(same, info), exact)


def test_fit_info_json_round_trip_and_validation() -> None:
    _, info = fit_to_square(noise(10, 30), 16, "pad")
    text = info.to_json()
    assert '"version":1' in text and FitInfo.from_json(text) == info
    with pytest.raises(ValueError, match="version"):
        FitInfo.from_json(text.replace('"version":1', '"version":9'))
    with pytest.raises(ValueError, match="not a fit-info record"):
        FitInfo.from_json('{"version": 1}')
    with pytest.raises(ValueError, match="unknown fit mode"):
        fit_to_square(noise(4, 4), 8, "zoom")
    with pytest.raises(ValueError, match=r"uint8 array \[H, W, 3\]"):
        fit_to_square(noise(4, 4)[:, :, :2], 8)


def test_tensor_conversion_is_exact() -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    x = to_tensor(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert np.array_equal(from_tensor(x), img)
    assert from_tensor(torch.full((3, 2, 2), 5.0)).max() == 255  # clamped
