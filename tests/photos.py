"""Real photographs for tests and benchmarks, offline: public-domain / CC0 photos shipped inside the
scikit-image wheel, cropped and resized deterministically to any size and written as PNG, JPEG or WebP.

Our bundled generator draws colour textures, so tests that only use its images never see what users
archive. These helpers give tests real photos at odd sizes and aspect ratios without a download.
Only photos whose scikit-image documentation says public domain or CC0 are offered (:data:`PHOTOS`);
scikit-image is imported lazily, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

INSTALL_HINT = "pip install -e '.[test]'"


@dataclass(frozen=True)
class PhotoSource:
    """One photo of the scikit-image wheel and where its rights come from."""

    file: str  # file name under skimage/data/
    subject: str
    origin: str
    licence: str


# Checked against each loader's docstring in skimage/data/_fetchers.py (scikit-image 0.26).
PHOTOS: dict[str, PhotoSource] = {
    "astronaut": PhotoSource("astronaut.png", "astronaut Eileen Collins, 512x512",
                             "NASA Great Images database (flic.kr/p/r9qvLn)", "public domain (NASA, no known copyright)"),
    "coffee": PhotoSource("coffee.png", "a cup of coffee, 600x400", "photographer Rachel Michetti", "CC0"),
    "chelsea": PhotoSource("chelsea.png", "Chelsea the cat, 451x300", "photographer Stefan van der Walt", "CC0"),
    "rocket": PhotoSource("rocket.jpg", "Falcon 9 at Launch Complex 40, 640x427",
                          "SpaceX Photos (flickr.com/photos/spacexphotos/16511594820)", "public domain (SpaceX)"),
    "hubble": PhotoSource("hubble_deep_field.jpg", "Hubble deep field, 1000x872",
                          "HubbleSite, NASA release 2012/37", "public domain (NASA)"),
    "retina": PhotoSource("retina.jpg", "fundus photograph of a normal left eye, 1411x1411",
                          "Wikimedia Commons, Mikael Häggström", "CC0 1.0"),
}

SAVE_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95}), "jpeg": ("JPEG", {"quality": 95}),
                "webp": ("WEBP", {"quality": 95})}


@dataclass(frozen=True)
class PhotoSpec:
    """A photo file to write: which photo, its ``(width, height)`` and its file type (a suffix)."""

    photo: str
    size: tuple[int, int]
    suffix: str = "png"

    @property
    def file_name(self) -> str:
        return f"{self.photo}_{self.size[0]}x{self.size[1]}.{self.suffix}"


# Odd sizes and aspect ratios, every file type the product reads most: wide, tall, tiny, odd.
DEFAULT_SPECS: tuple[PhotoSpec, ...] = (
    PhotoSpec("coffee", (512, 384), "png"),
    PhotoSpec("rocket", (300, 1000), "jpg"),
    PhotoSpec("chelsea", (1000, 300), "webp"),
    PhotoSpec("astronaut", (257, 129), "png"),
)


class PhotosUnavailableError(RuntimeError):
    """scikit-image (the source of the photos) is not installed."""


def skimage_data_dir() -> Path:
    """The folder of scikit-image's bundled sample data; :class:`PhotosUnavailableError` without it."""
    try:
        import skimage
    except ImportError:
        raise PhotosUnavailableError(
            f"the test photos come from scikit-image, which is not installed: run {INSTALL_HINT}") from None
    return Path(skimage.__file__).parent / "data"


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    """Photo ``name`` (a key of :data:`PHOTOS`) as an RGB image; with ``size = (width, height)`` it is
    centre-cropped to that aspect ratio, then resized with Lanczos (the same pixels every run)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; use one of {', '.join(PHOTOS)}")
    path = skimage_data_dir() / PHOTOS[name].file
    if not path.is_file():
        raise PhotosUnavailableError(f"{path} is missing: this scikit-image does not ship the photo "
                                     f"(0.25 and later do); run {INSTALL_HINT}")
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if size is None:
        return rgb
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"size must be (width, height) of at least 1 pixel, got {size}")
    src_w, src_h = rgb.size
    # The largest centred box of the target aspect ratio (integer arithmetic: no float ties).
    if src_w * height > src_h * width:
        box_w, box_h = max(1, src_h * width // height), src_h
    else:
        box_w, box_h = src_w, max(1, src_w * height // width)
    left, top = (src_w - box_w) // 2, (src_h - box_h) // 2
    cropped = rgb.crop((left, top, left + box_w, top + box_h))
    return cropped.resize((width, height), Image.Resampling.LANCZOS)


def write_photos(folder: str | Path, specs: Iterable[PhotoSpec | tuple] = DEFAULT_SPECS) -> list[Path]:
    """Write each spec (a :class:`PhotoSpec` or ``(photo, (width, height), suffix)``) into ``folder``;
    return the paths in order. PNG is lossless, JPEG and WebP are written at quality 95."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        spec = spec if isinstance(spec, PhotoSpec) else PhotoSpec(*spec)
        if spec.suffix not in SAVE_FORMATS:
            raise ValueError(f"unknown file type {spec.suffix!r}; use one of {', '.join(SAVE_FORMATS)}")
        fmt, options = SAVE_FORMATS[spec.suffix]
        path = out / spec.file_name
        photo(spec.photo, spec.size).save(path, fmt, **options)
        paths.append(path)
    return paths


def photo_names() -> Sequence[str]:
    """The photos on offer (public domain or CC0)."""
    return tuple(PHOTOS)
