"""Reading and writing network checkpoints (official StyleGAN3 snapshots and our own formats)."""
