"""Reading and writing network checkpoints.

* :mod:`~sg3archive.checkpoints.loader`: ``load_network`` — any supported file, any fsspec URL;
* :mod:`~sg3archive.checkpoints.official_pickle`: NVIDIA's snapshots read as data only (no code runs);
* :mod:`~sg3archive.checkpoints.network_file` / :mod:`~sg3archive.checkpoints.encoder_file`: our own
  network and encoder formats (safetensors + JSON);
* :mod:`~sg3archive.checkpoints.safe_read`: bounded reads of those files;
* :mod:`~sg3archive.checkpoints.fingerprint`: the content fingerprint of a network's weights.
"""
