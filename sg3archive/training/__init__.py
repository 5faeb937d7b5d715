"""Encoder training: losses, data, the training loop, checkpoints and evaluation."""

from sg3archive.training.config import TrainConfig
from sg3archive.training.losses import LOSS_PRESETS, LossWeights, WPrior, fit_w_prior, gaussian_kl
from sg3archive.training.trainer import TrainResult, train_encoder

__all__ = ["LOSS_PRESETS", "LossWeights", "TrainConfig", "TrainResult", "WPrior", "fit_w_prior", "gaussian_kl",
           "train_encoder"]
