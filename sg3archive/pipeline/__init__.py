"""The archive pipeline: job specs, compress, restore, inspect (library code; the CLI and flows call it)."""
