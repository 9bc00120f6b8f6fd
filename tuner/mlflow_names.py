"""Names in the MLflow store that the commands share, importable without mlflow.

`python -m tuner.predict --help` and `python -m tuner.promote --help` show the default model and the
tracking flag; importing them from here, not from tuner.tracking (mlflow and torch, seconds to import),
keeps `--help` instant. tuner.tracking uses the same names.
"""
from __future__ import annotations

from typing import Any

DEFAULT_MODEL_NAME = "modified-resnet-cifar10"
CHAMPION_ALIAS = "champion"  # the version `tuner.predict` uses unless told otherwise
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"
TRACKING_HELP = "tracking server or store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"


def add_tracking_argument(parser: Any) -> None:
    """The `--mlflow-uri` flag every CLI that reads the store shares (resolved by tuner.tracking.open_client)."""
    parser.add_argument("--mlflow-uri", help=TRACKING_HELP)
