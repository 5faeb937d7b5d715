"""The encoder training loop (library code; the CLI and the Prefect flow call it).

Per step: draw a batch (synthetic pairs, real images or both), encode it, and minimize the
weighted sum of the latent loss (synthetic pairs), the image losses through the frozen
generator (pixel MSE, LPIPS, discriminator feature matching when a ``D`` is given) and the KL
divergence to the generator's W prior. Schedules: an autoencoder phase before the KL term and
sampling switch on (``kl_start``/``kl_ramp``) and progressive W+ (coarse layer groups first).
Checkpoints, a metrics log (JSON lines) and input-vs-reconstruction grids go to ``out_dir``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from sg3archive.networks.encoder import build_encoder, hierarchy_groups
from sg3archive.pixels import make_grid, to_pil, to_uint8
from sg3archive.training.checkpoint import load_checkpoint, save_checkpoint
from sg3archive.training.config import TrainConfig
from sg3archive.training.data import RealImages, SyntheticPairs, SyntheticPool
from sg3archive.training.losses import feature_matching, fit_w_prior, gaussian_kl, latent_loss, pixel_loss

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainResult:
    encoder: torch.nn.Module
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    samples: list[Path] = field(default_factory=list)
    exported: str | None = None  # fingerprint of the encoder written by ``train_for_network(export_dir=...)``


def enabled_layers(config: TrainConfig, num_ws: int, step: int) -> torch.Tensor:
    """Bool mask ``[num_ws]`` of the W+ layers trained at ``step`` (progressive W+): group ``g``
    (coarse → fine) from step ``progressive[g]`` on, groups without a start step never; the coarse
    group always."""
    if not config.progressive:
        return torch.ones(num_ws, dtype=torch.bool)
    groups = hierarchy_groups(num_ws)
    mask = torch.zeros(num_ws, dtype=torch.bool)
    mask[groups[0]] = True
    for layers, start in zip(groups, config.progressive):
        if step >= start:
            mask[layers] = True
    return mask


def _make_encoder(G: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    return build_encoder(config.encoder, num_ws=G.num_ws, w_dim=G.w_dim, img_resolution=G.img_resolution,
                         img_channels=G.img_channels, width=config.width,
                         w_avg=G.mapping.w_avg.detach().cpu().clone())


def _save_grid(path: Path, inputs: torch.Tensor, recon: torch.Tensor) -> None:
    """Two rows per block: inputs above their reconstructions."""
    n = min(8, len(inputs))
    tiles = list(to_uint8(inputs[:n])) + list(to_uint8(recon[:n]))
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(tiles, columns=n)).save(path)


def train_encoder(
    G: torch.nn.Module,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    D: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    max_steps_this_run: int | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume training) an encoder for the frozen generator ``G``.

    ``lpips``: the perceptual metric (images in [-1, 1] → per-image distance); built from
    ``config.lpips_net`` when None and the perceptual weight is non-zero. ``on_log`` is called
    with each logged metrics record (the flow publishes them). ``max_steps_this_run`` stops
    early (after a checkpoint) — for tests of resuming and for time-boxed jobs. ``init_from``:
    an exported encoder directory to start from instead of a fresh one (fine-tuning; ignored
    when resuming a checkpoint).
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    G = G.to(device).eval().requires_grad_(False)
    if D is not None:
        D = D.to(device).eval().requires_grad_(False)
    fingerprint = getattr(G, "fingerprint", None)
    if fingerprint is None:
        from sg3archive.checkpoints.fingerprint import network_fingerprint
        fingerprint = network_fingerprint(G)
    weights = config.weights
    ckpt_dir = out_dir / CHECKPOINT_DIR
    rng = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    step = 0
    if resume and (ckpt_dir / "train_state.json").exists():
        encoder, opt_state, rng_state, step, saved, history = load_checkpoint(ckpt_dir, generator=G, device=device)
        diff = config.resume_compatible(saved)
        if diff:
            raise ValueError(f"{ckpt_dir} was trained with different settings ({', '.join(diff)}); "
                             "use the same settings to resume, or a new output directory (or resume=False)")
        optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr, betas=config.betas)
        optimizer.load_state_dict(opt_state)
        rng.set_state(rng_state)
    elif init_from is not None:  # fine-tune an exported encoder (same generator)
        from sg3archive.checkpoints.encoder_file import load_encoder
        encoder = load_encoder(str(init_from), generator=G).to(device).train().requires_grad_(True)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr, betas=config.betas)
    else:
        torch.manual_seed(config.seed)  # encoder initialization
        encoder = _make_encoder(G, config).to(device).train()
        optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr, betas=config.betas)

    prior = fit_w_prior(G, seed=config.seed + 1)
    if lpips is None and weights.perceptual > 0 and config.lpips_net and config.image_every:
        from sg3archive.metrics import LPIPS
        lpips = LPIPS(net=config.lpips_net, device=device)

    pairs = SyntheticPairs(G, config.truncation_psi, config.truncation_cutoff, config.mixing_prob,
                           mixing_cuts=[g[0] for g in hierarchy_groups(G.num_ws)[1:]])
    synthetic: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]] = pairs
    if config.synthetic_pool:
        key = {"generator": fingerprint, "psi": config.truncation_psi, "cutoff": config.truncation_cutoff,
               "mixing": config.mixing_prob}
        synthetic = SyntheticPool.cached(out_dir / "synthetic_pool.safetensors", key, pairs, config.synthetic_pool,
                                         seed=config.seed + 2, progress=progress)
    real = None
    n_real = 0
    if config.data != "synthetic":
        real = RealImages(config.data, G.img_resolution, G.img_channels)
        n_real = round(config.batch_size * config.real_fraction)

    w_avg = G.mapping.w_avg.detach()
    end = config.steps if max_steps_this_run is None else min(config.steps, step + max_steps_this_run)
    samples: list[Path] = []
    bar = tqdm(total=config.steps, initial=step, desc="train encoder", unit="step", disable=not progress)
    log_path = out_dir / "metrics.jsonl"
    running: dict[str, float] = {}
    started = time.perf_counter()
    while step < end:
        parts, targets = [], None
        if n_real:
            parts.append(real(n_real, rng).to(device))
        if config.batch_size - n_real:
            imgs, targets = synthetic(config.batch_size - n_real, rng)
            parts.append(imgs.to(device))
            targets = targets.to(device)
        x = torch.cat(parts)
        mask = enabled_layers(config, G.num_ws, step).to(device)
        kl_factor = config.kl_factor(step)

        out = encoder(x)
        if kl_factor > 0:  # reparameterized sample; noise from the checkpointed CPU generator on any device
            eps = torch.randn(out.mean.shape, generator=rng).to(device)
            ws = out.mean + (0.5 * out.logvar).exp() * eps
        else:
            ws = out.mean
        ws = torch.where(mask[None, :, None], ws, w_avg)
        terms: dict[str, torch.Tensor] = {}
        if targets is not None and weights.latent:
            terms["latent"] = latent_loss(out.mean[n_real:], targets, prior, mask)
        if kl_factor > 0 and weights.kl:
            terms["kl"] = gaussian_kl(out.mean[:, mask], out.logvar[:, mask], prior)
        if config.image_every and step % config.image_every == 0:
            recon = G.synthesis(ws)
            terms["rec"] = pixel_loss(recon, x)
            if lpips is not None and weights.perceptual:
                terms["perceptual"] = lpips(recon, x).mean()
            if D is not None and weights.feature_match:
                terms["feature_match"] = feature_matching(D.extract_features(recon), D.extract_features(x))
        scale = {"latent": weights.latent, "kl": weights.kl * kl_factor, "rec": weights.rec,
                 "perceptual": weights.perceptual, "feature_match": weights.feature_match}
        loss = sum(scale[k] * v for k, v in terms.items())
        optimizer.zero_grad(set_to_none=True)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
            optimizer.step()
        step += 1
        bar.update(1)
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        running["loss"] = running.get("loss", 0.0) + float(loss.detach() if torch.is_tensor(loss) else loss)
        running["_n"] = running.get("_n", 0.0) + 1
        if step % config.log_every == 0 or step == end:
            n = running.pop("_n")
            record = {"step": step, **{k: v / n for k, v in running.items()},
                      "kl_factor": kl_factor, "layers": int(mask.sum()), "elapsed_s": time.perf_counter() - started}
            running = {}
            history.append(record)
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if on_log is not None:
                on_log(step, record)
        if config.sample_every and (step % config.sample_every == 0 or step == end):
            with torch.no_grad():
                recon = G.synthesis(torch.where(mask[None, :, None], encoder(x[:8]).mean, w_avg))
            samples.append(out_dir / "samples" / f"step_{step:06d}.png")
            _save_grid(samples[-1], x[:8], recon)
        if step % config.checkpoint_every == 0 or step == end:
            save_checkpoint(ckpt_dir, encoder=encoder, optimizer=optimizer, rng=rng, step=step, config=config,
                            generator_fingerprint=fingerprint, history=history)
    bar.close()
    encoder.eval()
    return TrainResult(encoder, step, history, ckpt_dir if ckpt_dir.exists() else None, samples)


def train_for_network(
    network: str | None,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    export_dir: str | None = None,
    device: str | torch.device = "auto",
    resume: bool = True,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train an encoder for the generator in the network file ``network`` (default: the bundled
    one), with feature matching when the file also has a ``D``; write the final encoder to
    ``export_dir`` when given. What the ``train`` command and the train-encoder flow run."""
    from sg3archive.assets import default_network_url
    from sg3archive.checkpoints.encoder_file import save_encoder
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.devices import resolve_device
    from sg3archive.errors import Sg3ArchiveError

    dev = resolve_device(device)
    source = network or default_network_url()
    G = load_network(source, device=dev)
    try:
        D = load_network(source, key="D", device=dev)
    except Sg3ArchiveError:
        D = None  # no discriminator in the file: no feature matching
    result = train_encoder(G, config, out_dir, D=D, device=dev, resume=resume, progress=progress, on_log=on_log,
                           init_from=init_from)
    if export_dir:
        result.exported = save_encoder(result.encoder, export_dir, generator_fingerprint=G.fingerprint,
                                       info={"step": result.step, "train_config": config.to_dict(), "network": source})
    return result
