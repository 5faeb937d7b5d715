"""Encoder training.

* :mod:`~sg3archive.training.job`: ``TrainJob``, the one record of a training run's settings
  (``TrainConfig`` is the same class; :mod:`~sg3archive.training.config` keeps that name);
* :mod:`~sg3archive.training.losses`: loss presets and terms (reconstruction, KL to the W prior,
  latent, feature matching);
* :mod:`~sg3archive.training.data`: synthetic pairs from the generator and real images (read with
  :func:`sg3archive.images.load_fitted`, like compress and audit);
* :mod:`~sg3archive.training.trainer`: the training loop in named steps, ``TrainReport``;
* :mod:`~sg3archive.training.checkpoint`: resumable checkpoints; :mod:`~sg3archive.training.evaluate`:
  held-out evaluation.
"""

from sg3archive.training.config import TrainConfig
from sg3archive.training.job import TrainJob, TrainJobError
from sg3archive.training.losses import LOSS_PRESETS, LossWeights, WPrior, fit_w_prior, gaussian_kl
from sg3archive.training.trainer import TrainReport, TrainResult, train_encoder, train_for_network

__all__ = ["LOSS_PRESETS", "LossWeights", "TrainConfig", "TrainJob", "TrainJobError", "TrainReport", "TrainResult", "WPrior",
           "fit_w_prior", "gaussian_kl", "train_encoder", "train_for_network"]
