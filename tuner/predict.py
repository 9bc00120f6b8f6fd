"""Classify image files with a registered model: `path  label  probability`, one line per image.

    python -m tuner.predict cat.png plane.jpg
    python -m tuner.predict --model-uri models:/modified-resnet-cifar10/3 photos/*.jpg

Images of any size and mode are converted to RGB and resized to 32x32 (bicubic), normalised like the
training data (`tuner.evaluate.preprocess`) and classified with flip test-time augmentation (the logits of
the image and its mirror are averaged, as in validation). All files are read before the model is
fetched, so a file that is not an image fails at once, naming the file.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import OneLineParser, UserError, exit_on_user_error
from tuner.mlflow_names import DEFAULT_MODEL_URI, add_tracking_argument

if TYPE_CHECKING:  # numpy, torch and mlflow load inside the functions that use them: --help stays instant
    import numpy as np
    import torch

IMAGE_SIZE = 32


def read_image(path: str | Path) -> np.ndarray:
    """One file as a 32 x 32 x 3 uint8 RGB array; anything PIL cannot decode is a UserError."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; give paths of PNG or JPEG images")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        reason = "not an image PIL can read" if isinstance(err, UnidentifiedImageError) else f"unreadable ({err})"
        raise UserError(f"{path}: {reason}; give PNG or JPEG images") from None


def load_model(model_uri: str, mlflow_uri: str | None) -> torch.nn.Module:
    """The network behind any MLflow model URI (registry alias/version, runs:/, models:/<id>, a folder)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tuner.tracking import mlflow_globals, open_client, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(mlflow_uri)
    if model_uri.startswith(("models:/", "runs:/")):
        _, tracking_uri = open_client(mlflow_uri)
    try:
        with mlflow_globals(tracking_uri):
            return mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except MlflowException as err:
        detail = str(err).splitlines()[0][:200]
        hint = (f"check the name and alias/version (e.g. {DEFAULT_MODEL_URI}, promote one with "
                f"`python -m tuner.promote`)" if model_uri.startswith("models:/") else "check the URI")
        raise UserError(f"cannot load model {model_uri}: {detail}; {hint}") from None
    except OSError as err:
        raise UserError(f"cannot load model {model_uri}: {err}; check the URI") from None


def classify(model: torch.nn.Module, images: np.ndarray, tta_flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(class index, probability) per image of an N x 32 x 32 x 3 uint8 batch."""
    import torch

    from tuner.evaluate import preprocess, tta_logits

    with torch.no_grad():
        probabilities = torch.softmax(tta_logits(model, preprocess(images), tta_flip), dim=1)
    best, index = probabilities.max(dim=1)
    return index.numpy(), best.numpy()


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m tuner.predict",
        description="Classify PNG/JPEG images with a registered ModifiedResNet; prints path, label, probability.",
        epilog="example: python -m tuner.predict cat.png ship.jpg --mlflow-uri http://127.0.0.1:5000",
    )
    parser.add_argument("images", nargs="+", help="image files (any size: resized to 32x32)")
    parser.add_argument("--model-uri", default=DEFAULT_MODEL_URI,
                        help=f"MLflow model URI (default: {DEFAULT_MODEL_URI})")
    add_tracking_argument(parser)
    parser.add_argument("--no-tta", dest="tta_flip", action="store_false", help="no flip test-time augmentation")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    import numpy as np

    from tuner.data import LABEL_NAMES

    images = np.stack([read_image(path) for path in args.images])
    model = load_model(args.model_uri, args.mlflow_uri)
    indices, probabilities = classify(model, images, args.tta_flip)
    width = max(len(path) for path in args.images)
    for path, index, probability in zip(args.images, indices, probabilities):
        print(f"{path:{width}s}  {LABEL_NAMES[int(index)]:10s}  {probability:.4f}")


if __name__ == "__main__":
    main()
