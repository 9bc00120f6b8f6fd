"""tuner: hyperparameter search for ModifiedResNet on CIFAR-10 (Ray Tune + Optuna + MLflow)."""

import os

__version__ = "0.1.0"

# Nothing leaves the machine unless the user asks: MLflow 3 sends usage telemetry from every process that
# imports it (the driver, the CLIs) and Ray reports usage from a cluster it starts. Both are read when
# mlflow is imported / Ray starts, so they are set here, before any tuner module imports either; a user
# who wants them sets the variables to opt in.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
