"""Latent codec: per-layer quantization and entropy coding of W+ codes into versioned payloads.

Knows nothing about the networks: it sees only tensors ``[N, num_ws, w_dim]``.
"""

from sg3archive.codec.errors import CodecError, ModelMismatchError, PayloadError
from sg3archive.codec.latent_codec import DecodedLatents, LatentCodec
from sg3archive.codec.profiles import PRESETS

__all__ = ["CodecError", "DecodedLatents", "LatentCodec", "ModelMismatchError", "PRESETS", "PayloadError"]
