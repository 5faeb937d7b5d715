"""``TrainConfig``: the older name of :class:`sg3archive.training.job.TrainJob`, kept importable.

The one definition of a training run's settings (fields, defaults, checks, the record saved
beside each checkpoint) is ``TrainJob``; this module only re-exports it under the names older
code imports.
"""

from __future__ import annotations

from sg3archive.networks.encoder import ENCODER_KINDS
from sg3archive.training.job import TrainJob

TrainConfig = TrainJob

__all__ = ["ENCODER_KINDS", "TrainConfig"]
