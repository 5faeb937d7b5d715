"""StyleGAN3 networks (generator, discriminator) written from the paper; official names and numerics."""

from sg3archive.networks.discriminator import Discriminator
from sg3archive.networks.generator import Generator, MappingNetwork, SynthesisNetwork, input_transform

__all__ = ["Discriminator", "Generator", "MappingNetwork", "SynthesisNetwork", "input_transform"]
