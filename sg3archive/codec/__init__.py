"""Latent codec: per-layer quantization and entropy coding of W+ codes into versioned payloads.

Knows nothing about the networks: it sees only tensors ``[N, num_ws, w_dim]``.

* :mod:`~sg3archive.codec.names`: coder and profile names, defaults and the one profile check;
* :mod:`~sg3archive.codec.profiles`: bits per layer of each preset;
* :mod:`~sg3archive.codec.model` / :mod:`~sg3archive.codec.quantize` / :mod:`~sg3archive.codec.tables`:
  the fitted model, quantization, frequency tables;
* :mod:`~sg3archive.codec.entropy` / :mod:`~sg3archive.codec.bitstream`: entropy coding and the payload format;
* :mod:`~sg3archive.codec.latent_codec`: ``LatentCodec``, what the pipeline calls.
"""

from sg3archive.codec.errors import CodecError, ModelMismatchError, PayloadError
from sg3archive.codec.latent_codec import DecodedLatents, LatentCodec
from sg3archive.codec.names import (
    CODER_NAMES,
    DEFAULT_CODER,
    DEFAULT_PROFILE,
    PROFILE_NAMES,
    CoderName,
    canonical_coder,
    check_profile,
)
from sg3archive.codec.profiles import PRESETS

__all__ = ["CODER_NAMES", "DEFAULT_CODER", "DEFAULT_PROFILE", "PRESETS", "PROFILE_NAMES", "CodecError", "CoderName",
           "DecodedLatents", "LatentCodec", "ModelMismatchError", "PayloadError", "canonical_coder", "check_profile"]
