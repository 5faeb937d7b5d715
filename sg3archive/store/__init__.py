"""The archive store: listing and reading inputs, the archive format, manifest and Parquet shards."""
