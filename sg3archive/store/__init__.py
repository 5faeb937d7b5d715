"""The archive store: the archive and nothing else.

* :mod:`~sg3archive.store.layout`: the names of everything under an archive's root (``archive.json``,
  ``_manifest/``, ``shards/``, ``codec/<hash>/``, ``_plans/``, ``_audit/``);
* :mod:`~sg3archive.store.format`: the Parquet schemas, row ids, exact source names, shard checks;
* :mod:`~sg3archive.store.manifest`: manifest generations and their compare-and-swap commits;
* :mod:`~sg3archive.store.bounded`: reading untrusted archive files within fixed limits, and never
  writing through a link out of the archive;
* :mod:`~sg3archive.store.archive`: ``ArchiveStore``, which owns all of the above.

Images (listing and reading sources, decoding, fitting) live in :mod:`sg3archive.images`; writing
restored files under DEST in :mod:`sg3archive.pipeline.destination`.
"""
