"""The encoder-training job: what to train, how, and where — one validated record.

:class:`TrainJob` is what the ``train`` command's flags and ``--manifest``, the train-encoder
flow and Python callers build; its training settings are saved beside every checkpoint (a
resumed run must use the same ones). ``TrainConfig`` is the same class under its older name.
Encoder kinds come from ``sg3archive.networks.encoder``, loss presets from
``sg3archive.training.losses``, LPIPS backbones from ``sg3archive.metrics.lpips_weights``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sg3archive.devices import DEVICE_HELP
from sg3archive.metrics.lpips_weights import LpipsNet
from sg3archive.networks.encoder import DEFAULT_ENCODER_KIND, ENCODER_KINDS, EncoderKind
from sg3archive.pipeline.jobs import JobError, _Spec, describe_errors
from sg3archive.training.losses import DEFAULT_LOSS_PRESET, LOSS_PRESETS, LossPreset, LossWeights

# Where a run happens rather than what it trains: a resumed run may change these.
LOCATION_FIELDS = frozenset({"network", "out_dir", "export_dir", "device", "resume", "init_encoder", "version"})
# Training settings a resumed run may change too.
RESUMABLE_FIELDS = frozenset({"steps", "log_every", "sample_every", "checkpoint_every", "extra",
                              "checkpoint_resolution", "precision"})
# LPIPS at full size by default (see ``loss_resolution``): measured on a 1024² StyleGAN3-T with LPIPS
# alex, pooling to 256 lowered a training step's peak by 0.2 GB of 6.1 GB (benchmarks in README).
DEFAULT_LOSS_RESOLUTION = 0
ERROR_PREFIX = "bad training configuration: "


class TrainJobError(JobError, ValueError):
    """A training job is invalid (also a ValueError, as TrainConfig's errors always were)."""


class TrainJob(_Spec):
    """What to train and how (defaults follow the guide: Adam 2e-4, betas (0.9, 0.999), ψ 0.7 with
    cutoff 8, the ``high_quality`` loss weights), and where the run lives."""

    # -- where -------------------------------------------------------------------------------
    network: str | None = Field(default=None, description="generator (pickle, directory, .safetensors; any fsspec URL); "
                                                          "default: the bundled network")
    out_dir: str | None = Field(default=None, description="run directory: checkpoint/, metrics.jsonl, samples/; an existing "
                                                          "run there is resumed (required to train)")
    export_dir: str | None = Field(default=None, description="also write the final encoder to this directory")
    device: str = Field(default="auto", description=DEVICE_HELP)
    resume: bool = Field(default=True, description="continue the run in out_dir from its checkpoint")
    init_encoder: str | None = Field(default=None, description="start from this exported encoder (fine-tuning) instead of "
                                                               "a fresh one")
    # -- what and how ------------------------------------------------------------------------
    encoder: EncoderKind = Field(default=DEFAULT_ENCODER_KIND, description="encoder kind (single: the guide's)")
    width: float = Field(default=1.0, description="multiplies the encoder's channel counts, in (0, 4]")
    steps: int = Field(default=1000, description="optimizer steps in all (a resumed run may raise it)")
    batch_size: int = Field(default=8, description="images per step")
    lr: float = Field(default=2e-4, description="Adam learning rate (the guide: 1e-4 to 5e-4)")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="Adam betas, each in [0, 1)")
    preset: LossPreset = Field(default=DEFAULT_LOSS_PRESET, description="loss weights (rec, KL, perceptual, feature match)")
    latent_weight: float = Field(default=1.0, description="latent loss on synthetic pairs (known W+)")
    rate_weight: float = Field(default=0.0, ge=0, description="rate term: bits per W+ value of the encoder's means under "
                                                             "a codec fitted to its outputs (0 = off)")
    rate_profile: int = Field(default=4, ge=1, le=16, description="with rate_weight: the bits per layer of the codec "
                                                                  "the rate is measured with")
    rate_refit_every: int = Field(default=200, ge=1, description="with rate_weight: refit that codec on the encoder's "
                                                                 "outputs every N steps")
    image_every: int = Field(default=1, description="image losses every N steps (0 = never: latent loss only)")
    kl_start: int = Field(default=0, description="autoencoder steps before the KL term (and sampling) switch on")
    kl_ramp: int = Field(default=0, description="steps to ramp the KL weight to full after kl_start")
    progressive: tuple[int, ...] = Field(default=(), description="step at which each layer group (coarse → fine) starts, "
                                                                 "e.g. 0,200,400")
    truncation_psi: float = Field(default=0.7, description="truncation ψ of synthetic pairs, in (0, 1]")
    truncation_cutoff: int | None = Field(default=8, description="truncate only the first N W vectors")
    mixing_prob: float = Field(default=0.5, description="style-mixing probability of synthetic pairs")
    data: str = Field(default="synthetic", description="'synthetic' or a folder/bucket URL of real images")
    real_fraction: float = Field(default=1.0, description="with a data URL: real share of each batch (the rest synthetic)")
    synthetic_pool: int = Field(default=0, description="draw synthetic pairs from a fixed pool of N (fast on CPU; 0 = fresh)")
    lpips_net: LpipsNet | None = Field(default="alex", description="perceptual-loss backbone (none switches the term off)")
    loss_resolution: int = Field(default=DEFAULT_LOSS_RESOLUTION,
                                 description="LPIPS on images average-pooled to at most this size, e.g. 256 (0 = the "
                                             "generator's size); the pixel loss and D features stay at full size")
    checkpoint_resolution: int = Field(default=0, description="activation checkpointing: synthesis layers at least this "
                                                              "wide run again in the backward pass (less memory, more "
                                                              "time; 0 = off)")
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="synthesis precision under autograd: bfloat16/float16 autocast (mixed precision, "
                                       "for CUDA) or float32")
    seed: int = Field(default=0, description="random seed of the run")
    log_every: int = Field(default=10, description="log metrics every N steps")
    sample_every: int = Field(default=200, description="write a sample grid every N steps (0 = never)")
    checkpoint_every: int = Field(default=200, description="checkpoint every N steps (and at the end)")
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form notes kept with the checkpoint")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise TrainJobError(ERROR_PREFIX + describe_errors(exc)) from None

    @field_validator("betas", "progressive", mode="before")
    @classmethod
    def _sequence(cls, value: Any) -> Any:
        """A list (YAML, JSON, a flow's parameters) is the same sequence as a tuple."""
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _checks(self) -> TrainJob:
        problems = []
        if self.encoder not in ENCODER_KINDS:  # unreachable through validation; kept for model_construct
            problems.append(f"encoder must be one of {ENCODER_KINDS}, not {self.encoder!r}")
        if self.preset not in LOSS_PRESETS:
            problems.append(f"preset must be one of {sorted(LOSS_PRESETS)}, not {self.preset!r}")
        if self.steps < 0 or self.batch_size < 1:
            problems.append("steps must be >= 0 and batch_size >= 1")
        if not 0 < self.lr <= 1e-2:
            problems.append(f"lr {self.lr} is outside (0, 1e-2] (the guide recommends 1e-4 to 5e-4)")
        if not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.width <= 4:
            problems.append(f"width must be in (0, 4], got {self.width}")
        if not 0 < self.truncation_psi <= 1:
            problems.append(f"truncation_psi must be in (0, 1], got {self.truncation_psi}")
        if not 0 <= self.real_fraction <= 1 or not 0 <= self.mixing_prob <= 1:
            problems.append("real_fraction and mixing_prob must be in [0, 1]")
        if list(self.progressive) != sorted(self.progressive) or any(s < 0 for s in self.progressive):
            problems.append(f"progressive must be non-decreasing steps, got {self.progressive}")
        if min(self.image_every, self.kl_start, self.kl_ramp, self.synthetic_pool, self.sample_every,
               self.loss_resolution, self.checkpoint_resolution) < 0:
            problems.append("image_every, kl_start, kl_ramp, synthetic_pool, sample_every, loss_resolution and "
                            "checkpoint_resolution must be >= 0")
        if min(self.log_every, self.checkpoint_every) < 1:
            problems.append("log_every and checkpoint_every must be >= 1 (a checkpoint is also written at the end)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- what the trainer reads ----------------------------------------------------------------
    @property
    def weights(self) -> LossWeights:
        return LossWeights.preset(self.preset, latent=self.latent_weight, rate=self.rate_weight)

    def kl_factor(self, step: int) -> float:
        """0 during the autoencoder phase, then a linear ramp to 1."""
        if step < self.kl_start:
            return 0.0
        if self.kl_ramp == 0:
            return 1.0
        return min(1.0, (step - self.kl_start + 1) / self.kl_ramp)

    # -- records -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (tuples as lists)."""
        d = self.model_dump()
        d["betas"], d["progressive"] = list(self.betas), list(self.progressive)
        return d

    def settings_dict(self) -> dict[str, Any]:
        """The training settings only (what a checkpoint records), without where the run lives."""
        return {k: v for k, v in self.to_dict().items() if k not in LOCATION_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        """Read :meth:`to_dict`'s record, or a checkpoint's saved by older sg3archive (training
        settings only, no ``version``: read as version 1)."""
        unknown = sorted(set(d) - set(cls.model_fields))
        if unknown:
            raise TrainJobError(f"unknown training settings: {unknown}")
        return cls(**d)

    def resume_compatible(self, other: TrainJob) -> list[str]:
        """Settings that differ from ``other``'s other than the ones a resumed run may change
        (where the run lives never counts)."""
        mutable = RESUMABLE_FIELDS | LOCATION_FIELDS
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in mutable and a[k] != b[k])


__all__ = ["LOCATION_FIELDS", "RESUMABLE_FIELDS", "TrainJob", "TrainJobError"]
