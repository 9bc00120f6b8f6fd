"""tuner: hyperparameter search for ModifiedResNet on CIFAR-10 (Ray Tune + Optuna + MLflow)."""

__version__ = "0.1.0"
