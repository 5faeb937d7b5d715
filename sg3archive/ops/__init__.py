"""Low-level tensor ops of the StyleGAN3 networks: a plain reference path and a faster default path."""
