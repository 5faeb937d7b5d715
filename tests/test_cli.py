"""The sg3archive command line, run for real (in-process through click, and once as a console script)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

import sg3archive
from sg3archive.assets import default_network_url
from sg3archive.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_generate_with_default_network_writes_pngs_and_grid(tmp_path: Path) -> None:
    result = run("generate", "--seeds", "0-4", "--trunc", "0.7", "--out", str(tmp_path), "--device", "cpu")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["grid.png"] + [f"seed{s:04d}.png" for s in range(5)]
    img = np.asarray(Image.open(tmp_path / "seed0000.png"))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.std() > 1  # an image, not a constant
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 64, 2 * 64)  # 5 images: 2 rows of 3
    # Different seeds give different images; the same seed gives the same image again.
    assert not np.array_equal(img, np.asarray(Image.open(tmp_path / "seed0001.png")))
    again = tmp_path / "again"
    assert run("generate", "--seeds", "0", "--trunc", "0.7", "--out", str(again), "--no-grid").exit_code == 0
    assert np.array_equal(img, np.asarray(Image.open(again / "seed0000.png")))


def test_generate_from_official_pickle_matches_reference_seed(sg3_reference_dir: Path, tmp_path: Path) -> None:
    pkl = sg3_reference_dir / "t64" / "network-snapshot.pkl"
    result = run("generate", "--network", str(pkl), "--seeds", "3,7", "--out", str(tmp_path), "--rotate", "10")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "seed0003.png").exists() and (tmp_path / "seed0007.png").exists()
    assert "network fingerprint" in result.output


def test_import_network_round_trip(sg3_reference_dir: Path, tmp_path: Path) -> None:
    pkl = sg3_reference_dir / "r64" / "network-snapshot.pkl"
    out = tmp_path / "net"
    result = run("import-network", str(pkl), str(out))
    assert result.exit_code == 0, result.output
    index = json.loads((out / "network.json").read_text())
    assert set(index["networks"]) == {"G_ema", "D"}
    assert len(index["source"]["sha256"]) == 64
    for key in ("G_ema", "D"):
        converted = sg3archive.load_network(out, key=key)
        original = sg3archive.load_network(pkl, key=key)
        assert converted.fingerprint == original.fingerprint == index["networks"][key]["fingerprint"]
        assert index["networks"][key]["fingerprint"] in result.output
    info = run("network-info", str(out), "--json")
    assert info.exit_code == 0
    assert json.loads(info.output)["num_ws"] == 16


def test_unsafe_pickle_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": Evil()}))
    result = CliRunner().invoke(main, ["import-network", str(bad), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "subprocess.call" in result.output and "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "out" / "network.json").exists()


@pytest.mark.parametrize("seeds", ["7-3", "a-b", "1,,2"])
def test_bad_seed_ranges_are_usage_errors(seeds: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["generate", "--seeds", seeds, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "seed range" in result.output


def test_missing_network_is_reported(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["generate", "--network", str(tmp_path / "nope.pkl"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_init_network_is_reproducible(tmp_path: Path) -> None:
    args = ["--resolution", "16", "--z-dim", "8", "--w-dim", "8", "--channel-base", "128", "--channel-max", "8", "--seed", "5"]
    assert run("init-network", str(tmp_path / "a"), *args).exit_code == 0
    assert run("init-network", str(tmp_path / "b"), *args, "--no-discriminator").exit_code == 0
    a = json.loads((tmp_path / "a" / "network.json").read_text())["networks"]
    b = json.loads((tmp_path / "b" / "network.json").read_text())["networks"]
    assert set(a) == {"G_ema", "D"} and set(b) == {"G_ema"}
    assert a["G_ema"]["fingerprint"] == b["G_ema"]["fingerprint"]


def test_bundled_default_network_loads_and_matches_its_index() -> None:
    G = sg3archive.load_network(default_network_url())
    index = json.loads((Path(default_network_url()) / "network.json").read_text())
    assert G.fingerprint == index["networks"]["G_ema"]["fingerprint"]
    assert G.num_ws == 16 and G.img_resolution == 64


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("sg3archive")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert sg3archive.__version__ in result.stdout


def test_readme_main_job_compress_inspect_restore(tmp_path) -> None:
    """The README's first command, after installing: compress the samples, restore them."""
    import json as _json

    from sg3archive.cli import main as cli

    samples = Path(__file__).resolve().parents[1] / "examples" / "images"
    runner = CliRunner()
    res = runner.invoke(cli, ["compress", str(samples), str(tmp_path / "archive"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "13 images archived" in res.output and "0 failed" in res.output and "ratio vs source" in res.output
    # the contract, the fidelity at the original size, the AVIF baseline, and each image's representation
    assert "contract: standard" in res.output and "fidelity at original size" in res.output
    assert "than AVIF at equal quality" in res.output
    assert "photos/coffee_320x240.jpg: " in res.output and "texture_00.png: " in res.output
    res = runner.invoke(cli, ["inspect", str(tmp_path / "archive"), "--json"])
    info = _json.loads(res.output)
    assert info["images"] == 13 and info["failures"] == 0
    res = runner.invoke(cli, ["restore", str(tmp_path / "archive"), str(tmp_path / "restored"), "--device", "cpu"])
    assert res.exit_code == 0 and "13 images restored" in res.output
    restored = {p.relative_to(tmp_path / "restored").as_posix() for p in (tmp_path / "restored").rglob("*.*")}
    assert restored == {p.relative_to(samples).with_suffix(".png").as_posix() for p in samples.rglob("*.*")}
    res = runner.invoke(cli, ["compress", str(samples), str(tmp_path / "archive"), "--profile", "high_quality"])
    assert res.exit_code == 1 and "error:" in res.output  # the archive was made with other settings
    res = runner.invoke(cli, ["compress", str(samples)])
    assert res.exit_code == 1 and "DEST is required" in res.stderr and "Traceback" not in res.output
