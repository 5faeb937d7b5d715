"""Prefect flows over the sg3archive library (see flows/README.md).

Importing this package switches off Prefect's server telemetry unless the environment says
otherwise: with it on, every local run (temporary server, SQLite) printed a long
``database is locked`` traceback from the telemetry task. Set
``PREFECT_SERVER_ANALYTICS_ENABLED=true`` before importing to keep it.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
