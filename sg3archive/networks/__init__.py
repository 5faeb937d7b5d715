"""Networks written from the papers, with official names and numerics.

* :mod:`~sg3archive.networks.generator`, :mod:`~sg3archive.networks.discriminator`, :mod:`~sg3archive.networks.layers`:
  StyleGAN3's generator and StyleGAN2's discriminator;
* :mod:`~sg3archive.networks.encoder`: image → W+ encoders and their kinds (``ENCODER_KINDS``, the one home);
* :mod:`~sg3archive.networks.build` / :mod:`~sg3archive.networks.bounds`: building a network from a
  config, and the bounds every config must respect;
* :mod:`~sg3archive.networks.presets`: seeded random networks; :mod:`~sg3archive.networks.sensitivity`:
  how much the image depends on each W+ layer (used by the codec's ``auto`` profile).
"""

from sg3archive.networks.discriminator import Discriminator
from sg3archive.networks.encoder import DEFAULT_ENCODER_KIND, ENCODER_KINDS, EncoderKind
from sg3archive.networks.generator import Generator, MappingNetwork, SynthesisNetwork, input_transform

__all__ = ["DEFAULT_ENCODER_KIND", "ENCODER_KINDS", "Discriminator", "EncoderKind", "Generator", "MappingNetwork",
           "SynthesisNetwork", "input_transform"]
