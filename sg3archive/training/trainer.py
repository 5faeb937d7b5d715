"""The encoder training loop (library code; the CLI and the Prefect flow call it).

Per step: draw a batch (synthetic pairs, real images or both), encode it, and minimize the
weighted sum of the latent loss (synthetic pairs), the image losses through the frozen
generator (pixel MSE, LPIPS, discriminator feature matching when a ``D`` is given) and the KL
divergence to the generator's W prior. Schedules: an autoencoder phase before the KL term and
sampling switch on (``kl_start``/``kl_ramp``) and progressive W+ (coarse layer groups first).
Checkpoints, a metrics log (JSON lines) and input-vs-reconstruction grids go to ``out_dir``.

:func:`train_encoder` is a sequence of named steps: :func:`_start` (a fresh, fine-tuned or
resumed encoder with its optimizer and random state), :func:`_batch_source` (what a batch is
drawn from), then per step :func:`_train_step` (one optimizer step), :class:`_MetricsLog`
(running means, the JSON-lines log, ``on_log``), :func:`_save_sample` (a grid) and
:func:`~sg3archive.training.checkpoint.save_checkpoint`. The result is a frozen
:class:`TrainReport`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from sg3archive.images import make_grid, to_pil, to_uint8
from sg3archive.networks.encoder import build_encoder, hierarchy_groups
from sg3archive.training.checkpoint import STATE_JSON, load_checkpoint, save_checkpoint
from sg3archive.training.config import TrainConfig
from sg3archive.training.data import RealImages, SyntheticPairs, SyntheticPool
from sg3archive.training.losses import WPrior, feature_matching, fit_w_prior, gaussian_kl, latent_loss, pixel_loss
from sg3archive.training.rate import RateTerm

if TYPE_CHECKING:
    from sg3archive.networks.discriminator import Discriminator
    from sg3archive.networks.generator import Generator

CHECKPOINT_DIR = "checkpoint"
METRICS_LOG = "metrics.jsonl"
SYNTHETIC_POOL_FILE = "synthetic_pool.safetensors"
SAMPLES_DIR = "samples"
SAMPLE_IMAGES = 8  # images per sample grid (inputs above their reconstructions)

Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainReport:
    """What a training run reached.

    Attributes:
        encoder: the trained encoder (eval mode).
        step: the step reached (``config.steps`` unless stopped early).
        history: the logged metrics records, oldest first (resumed runs include earlier ones).
        checkpoint: the checkpoint folder, None when none was written.
        samples: the input-vs-reconstruction grids written this run.
        exported: fingerprint of the encoder written by ``train_for_network(export_dir=...)``.
    """

    encoder: torch.nn.Module
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    samples: list[Path] = field(default_factory=list)
    exported: str | None = None


TrainResult = TrainReport  # the earlier name


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


def _make_encoder(G: Generator, config: TrainConfig) -> torch.nn.Module:
    return build_encoder(config.encoder, num_ws=G.num_ws, w_dim=G.w_dim, img_resolution=G.img_resolution,
                         img_channels=G.img_channels, width=config.width,
                         w_avg=G.mapping.w_avg.detach().cpu().clone())


def _save_grid(path: Path, inputs: torch.Tensor, recon: torch.Tensor) -> None:
    """Two rows per block: inputs above their reconstructions."""
    n = min(SAMPLE_IMAGES, len(inputs))
    tiles = list(to_uint8(inputs[:n])) + list(to_uint8(recon[:n]))
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(tiles, columns=n)).save(path)


def generator_fingerprint(G: torch.nn.Module) -> str:
    """``G``'s fingerprint: the one it was loaded with, else computed from its weights."""
    fingerprint = getattr(G, "fingerprint", None)
    if isinstance(fingerprint, str):
        return fingerprint
    from sg3archive.checkpoints.fingerprint import network_fingerprint

    return network_fingerprint(G)


# -- setup --------------------------------------------------------------------------------------
@dataclass
class _State:
    """What a run carries from step to step (and what a checkpoint holds)."""

    encoder: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rng: torch.Generator
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _adam(encoder: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(encoder.parameters(), lr=config.lr, betas=config.betas)


def _start(G: Generator, config: TrainConfig, ckpt_dir: Path, device: torch.device, resume: bool,
           init_from: str | Path | None) -> _State:
    """The encoder to train: resumed from ``ckpt_dir`` (same settings only), fine-tuned from an
    exported encoder ``init_from``, or fresh (initialized from ``config.seed``)."""
    rng = torch.Generator().manual_seed(config.seed)
    if resume and (ckpt_dir / STATE_JSON).exists():
        encoder, opt_state, rng_state, step, saved, history = load_checkpoint(ckpt_dir, generator=G, device=device)
        diff = config.resume_compatible(saved)
        if diff:
            raise ValueError(f"{ckpt_dir} was trained with different settings ({', '.join(diff)}); "
                             "use the same settings to resume, or a new output directory (or resume=False)")
        optimizer = _adam(encoder, config)
        optimizer.load_state_dict(opt_state)
        rng.set_state(rng_state)
        return _State(encoder, optimizer, rng, step, history)
    if init_from is not None:  # fine-tune an exported encoder (same generator)
        from sg3archive.checkpoints.encoder_file import load_encoder

        encoder = load_encoder(str(init_from), generator=G).to(device).train().requires_grad_(True)
    else:
        torch.manual_seed(config.seed)  # encoder initialization
        encoder = _make_encoder(G, config).to(device).train()
    return _State(encoder, _adam(encoder, config), rng)


def _perceptual(config: TrainConfig, lpips: Perceptual | None, device: torch.device) -> Perceptual | None:
    """The perceptual metric: ``lpips`` when given, else built from ``config.lpips_net`` when the
    perceptual weight is non-zero and image losses run at all."""
    if lpips is None and config.weights.perceptual > 0 and config.lpips_net and config.image_every:
        from sg3archive.metrics import LPIPS

        return LPIPS(net=config.lpips_net, device=device)
    return lpips


# -- batches ------------------------------------------------------------------------------------
Pairs = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class _BatchSource:
    """Where each batch comes from: ``n_real`` real images first, the rest synthetic pairs."""

    synthetic: Pairs
    real: RealImages | None
    n_real: int
    batch_size: int

    def draw(self, rng: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x [batch, C, R, R], W+ targets of the synthetic part or None)`` on ``device``."""
        parts, targets = [], None
        if self.real is not None and self.n_real:
            parts.append(self.real(self.n_real, rng).to(device))
        if self.batch_size - self.n_real:
            imgs, ws = self.synthetic(self.batch_size - self.n_real, rng)
            parts.append(imgs.to(device))
            targets = ws.to(device)
        return torch.cat(parts), targets


def _batch_source(G: Generator, config: TrainConfig, out_dir: Path, fingerprint: str, progress: bool) -> _BatchSource:
    pairs = SyntheticPairs(G, config.truncation_psi, config.truncation_cutoff, config.mixing_prob,
                           mixing_cuts=[g[0] for g in hierarchy_groups(G.num_ws)[1:]])
    synthetic: Pairs = pairs
    if config.synthetic_pool:
        key = {"generator": fingerprint, "psi": config.truncation_psi, "cutoff": config.truncation_cutoff,
               "mixing": config.mixing_prob}
        synthetic = SyntheticPool.cached(out_dir / SYNTHETIC_POOL_FILE, key, pairs, config.synthetic_pool,
                                         seed=config.seed + 2, progress=progress)
    real, n_real = None, 0
    if config.data != "synthetic":
        real = RealImages(config.data, G.img_resolution, G.img_channels)
        n_real = round(config.batch_size * config.real_fraction)
    return _BatchSource(synthetic, real, n_real, config.batch_size)


# -- one step -----------------------------------------------------------------------------------
def pooled(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` average-pooled by the smallest integer factor that brings their larger side to at
    most ``size`` (unchanged when ``size`` is 0 or they are no larger): where LPIPS runs, as
    inversion encoders commonly compute it at 256²."""
    side = max(images.shape[-2:])
    if size <= 0 or side <= size:
        return images
    factor = -(-side // size)
    return torch.nn.functional.avg_pool2d(images, factor, ceil_mode=True)


@dataclass(frozen=True)
class _StepOutcome:
    """One optimizer step: its loss terms (unweighted), the weighted total, the schedule's state."""

    terms: dict[str, torch.Tensor]
    loss: torch.Tensor | float
    kl_factor: float
    mask: torch.Tensor
    x: torch.Tensor


@dataclass(frozen=True)
class _Frozen:
    """The fixed parts of every step: networks, prior and the metric."""

    G: Generator
    D: Discriminator | None
    prior: WPrior
    lpips: Perceptual | None
    w_avg: torch.Tensor
    device: torch.device
    rate: RateTerm | None = None  # the rate term's codec (refitted as the encoder changes)


def _train_step(state: _State, batch: _BatchSource, fixed: _Frozen, config: TrainConfig) -> _StepOutcome:
    """Draw a batch, encode it, and take one optimizer step on the weighted loss terms."""
    weights, G, device, step = config.weights, fixed.G, fixed.device, state.step
    x, targets = batch.draw(state.rng, device)
    mask = enabled_layers(config, G.num_ws, step).to(device)
    kl_factor = config.kl_factor(step)
    if fixed.rate is not None and weights.rate and fixed.rate.due(step):
        fixed.rate.fit(state.encoder, lambda rng: batch.draw(rng, device)[0], step)

    out = state.encoder(x)
    if kl_factor > 0:  # reparameterized sample; noise from the checkpointed CPU generator on any device
        eps = torch.randn(out.mean.shape, generator=state.rng).to(device)
        ws = out.mean + (0.5 * out.logvar).exp() * eps
    else:
        ws = out.mean
    ws = torch.where(mask[None, :, None], ws, fixed.w_avg)
    terms: dict[str, torch.Tensor] = {}
    if targets is not None and weights.latent:
        terms["latent"] = latent_loss(out.mean[batch.n_real:], targets, fixed.prior, mask)
    if kl_factor > 0 and weights.kl:
        terms["kl"] = gaussian_kl(out.mean[:, mask], out.logvar[:, mask], fixed.prior)
    if fixed.rate is not None and weights.rate:
        terms["rate"] = fixed.rate.bits_per_value(out.mean, state.rng)
    if config.image_every and step % config.image_every == 0:
        recon = G.synthesis(ws)
        terms["rec"] = pixel_loss(recon, x)
        if fixed.lpips is not None and weights.perceptual:
            terms["perceptual"] = fixed.lpips(pooled(recon, config.loss_resolution),
                                              pooled(x, config.loss_resolution)).mean()
        if fixed.D is not None and weights.feature_match:
            terms["feature_match"] = feature_matching(fixed.D.extract_features(recon), fixed.D.extract_features(x))
    scale = {"latent": weights.latent, "kl": weights.kl * kl_factor, "rec": weights.rec,
             "perceptual": weights.perceptual, "feature_match": weights.feature_match, "rate": weights.rate}
    loss: torch.Tensor | float = sum((scale[k] * v for k, v in terms.items()), 0.0)
    state.optimizer.zero_grad(set_to_none=True)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        loss.backward()
        state.optimizer.step()
    state.step += 1
    return _StepOutcome(terms, loss, kl_factor, mask, x)


# -- logging ------------------------------------------------------------------------------------
class _MetricsLog:
    """Running means of the loss terms since the last record; each record is appended to the
    run's history and its JSON-lines log, shown on the progress bar and passed to ``on_log``."""

    def __init__(self, path: Path, history: list[dict[str, float]], bar: tqdm,
                 on_log: Callable[[int, dict[str, float]], None] | None) -> None:
        self.path, self.history, self.bar, self.on_log = path, history, bar, on_log
        self.sums: dict[str, float] = {}
        self.count = 0
        self.started = time.perf_counter()

    def add(self, outcome: _StepOutcome) -> None:
        for k, v in outcome.terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        loss = outcome.loss
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.count += 1

    def record(self, step: int, outcome: _StepOutcome) -> dict[str, float]:
        record = {"step": step, **{k: v / self.count for k, v in self.sums.items()},
                  "kl_factor": outcome.kl_factor, "layers": int(outcome.mask.sum()),
                  "elapsed_s": time.perf_counter() - self.started}
        self.sums, self.count = {}, 0
        self.history.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        if self.on_log is not None:
            self.on_log(step, record)
        return record


# -- sampling -----------------------------------------------------------------------------------
def _save_sample(out_dir: Path, step: int, state: _State, fixed: _Frozen, outcome: _StepOutcome) -> Path:
    """A grid of the step's first inputs above their reconstructions (mean W+, enabled layers)."""
    x = outcome.x[:SAMPLE_IMAGES]
    with torch.no_grad():
        recon = fixed.G.synthesis(torch.where(outcome.mask[None, :, None], state.encoder(x).mean, fixed.w_avg))
    path = out_dir / SAMPLES_DIR / f"step_{step:06d}.png"
    _save_grid(path, x, recon)
    return path


def _due(step: int, every: int, end: int) -> bool:
    """Whether something done every ``every`` steps (and at the last step) is due at ``step``."""
    return step % every == 0 or step == end


# -- the loop -----------------------------------------------------------------------------------
def train_encoder(
    G: Generator,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    D: Discriminator | None = None,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    lpips: Perceptual | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    max_steps_this_run: int | None = None,
    init_from: str | Path | None = None,
) -> TrainReport:
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
    G.synthesis.checkpoint_resolution = config.checkpoint_resolution
    G.synthesis.precision = config.precision
    if D is not None:
        D = D.to(device).eval().requires_grad_(False)
    fingerprint = generator_fingerprint(G)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    state = _start(G, config, ckpt_dir, device, resume, init_from)
    rate = RateTerm(config.rate_profile, config.rate_refit_every, config.seed) if config.rate_weight else None
    fixed = _Frozen(G, D, fit_w_prior(G, seed=config.seed + 1), _perceptual(config, lpips, device),
                    G.mapping.w_avg.detach(), device, rate)
    batch = _batch_source(G, config, out_dir, fingerprint, progress)

    end = config.steps if max_steps_this_run is None else min(config.steps, state.step + max_steps_this_run)
    samples: list[Path] = []
    bar = tqdm(total=config.steps, initial=state.step, desc="train encoder", unit="step", disable=not progress)
    log = _MetricsLog(out_dir / METRICS_LOG, state.history, bar, on_log)
    while state.step < end:
        outcome = _train_step(state, batch, fixed, config)
        step = state.step
        bar.update(1)
        log.add(outcome)
        if _due(step, config.log_every, end):
            log.record(step, outcome)
        if config.sample_every and _due(step, config.sample_every, end):
            samples.append(_save_sample(out_dir, step, state, fixed, outcome))
        if _due(step, config.checkpoint_every, end):
            save_checkpoint(ckpt_dir, encoder=state.encoder, optimizer=state.optimizer, rng=state.rng, step=step,
                            config=config, generator_fingerprint=fingerprint, history=state.history)
    bar.close()
    state.encoder.eval()
    return TrainReport(state.encoder, state.step, state.history, ckpt_dir if ckpt_dir.exists() else None, samples)


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
) -> TrainReport:
    """Train an encoder for the generator in the network file ``network`` (default: the bundled
    one), with feature matching when the file also has a ``D``; write the final encoder to
    ``export_dir`` when given. What the ``train`` command and the train-encoder flow run."""
    from sg3archive.assets import default_network_url
    from sg3archive.checkpoints.encoder_file import save_encoder
    from sg3archive.checkpoints.loader import load_network
    from sg3archive.devices import resolve_device
    from sg3archive.errors import Sg3ArchiveError
    from sg3archive.networks.discriminator import Discriminator
    from sg3archive.networks.generator import Generator

    dev = resolve_device(device)
    source = network or default_network_url()
    G = load_network(source, device=dev)
    if not isinstance(G, Generator):  # load_network builds these classes; anything else is a bug, said plainly
        raise Sg3ArchiveError(f"{source}: its generator loaded as {type(G).__name__}, not a StyleGAN3 Generator")
    D: Discriminator | None
    try:
        loaded = load_network(source, key="D", device=dev)
    except Sg3ArchiveError:
        loaded = None  # no discriminator in the file: no feature matching
    D = loaded if isinstance(loaded, Discriminator) else None
    report = train_encoder(G, config, out_dir, D=D, device=dev, resume=resume, progress=progress, on_log=on_log,
                           init_from=init_from)
    if not export_dir:
        return report
    exported = save_encoder(report.encoder, export_dir, generator_fingerprint=generator_fingerprint(G),
                            info={"step": report.step, "train_config": config.settings_dict(), "network": source})
    return dataclasses.replace(report, exported=exported)
