"""StyleGAN3's low-level ops: :mod:`~sg3archive.ops.reference` (plain PyTorch, matching NVIDIA's
numerics), :mod:`~sg3archive.ops.fast` (the same ops, faster on CPU, the same signatures so either
can serve a layer) and :mod:`~sg3archive.ops.filters` (filter design)."""
