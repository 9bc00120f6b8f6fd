"""Classify image files with a registered model: `path  label  probability`, one line per image.

    python -m tuner.predict cat.png plane.jpg
    python -m tuner.predict --top-k 3 --json photos/*.jpg
    python -m tuner.predict --model-uri models:/modified-resnet-cifar10/3 photos/*.jpg

Which version a registry alias (`@champion`) resolved to is printed first, to stderr (in the JSON with
--json), so stdout stays one line per image. A file that cannot be read is reported on stderr, in order,
and the other files are still classified; the exit code is then 1, or 2 when no file could be read (as for
bad flags and models).

Images of any size and mode are converted to RGB and resized to 32x32 (bicubic), normalised like the
training data (`tuner.evaluate.preprocess`) and classified with flip test-time augmentation (the logits of
the image and its mirror are averaged, as in validation). All files are read before the model is
fetched.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import OneLineParser, UserError, excerpt, exit_on_user_error
from tuner.mlflow_names import DEFAULT_MODEL_URI, add_tracking_argument, quiet_downloads, resolve_tracking_uri

if TYPE_CHECKING:  # numpy, torch and mlflow load inside the functions that use them: --help stays instant
    import numpy as np
    import torch

IMAGE_SIZE = 32
# MLflow draws a progress bar per artifact download on stderr: noise around the CLIs' one-line answers.
# What --model-uri takes, for errors about something else given there.
MODEL_URI_FORMS = (f"give a registered model ({DEFAULT_MODEL_URI} or models:/NAME/VERSION), runs:/RUN_ID/model, "
                   f"or a folder holding an MLmodel file")
# What to do about a model whose files cannot be loaded.
MODEL_REPAIR = ("promote another version (python -m tuner.promote --version N --force) or register the model "
                "again with a tuner sweep")


def read_image(path: str | Path) -> np.ndarray:
    """One file as a 32 x 32 x 3 uint8 RGB array; anything PIL cannot decode is a UserError."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file; give the paths of PNG or JPEG images "
                        f"(e.g. {path}/*.png)")
    if not path.is_file():
        what = "not a regular file (a pipe or a device)" if path.exists() else "no such file"
        raise UserError(f"{path}: {what}; give paths of PNG or JPEG images")
    try:
        with warnings.catch_warnings():
            # between its pixel limit and twice it PIL decodes but warns on stderr: noise beside the one-line
            # answers; beyond twice it refuses (DecompressionBombError, below)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
                return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels.group(1)):,} pixels, " if pixels else ""
        raise UserError(f"{path}: the image is too large ({size}more than the {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
                        f"read safely); shrink it first (it is classified at {IMAGE_SIZE}x{IMAGE_SIZE} anyway)"
                        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = "not an image PIL can read" if isinstance(err, UnidentifiedImageError) else f"unreadable ({err})"
        raise UserError(f"{path}: {reason}; give PNG or JPEG images") from None


def load_model(model_uri: str, mlflow_uri: str | None) -> torch.nn.Module:
    """The network behind any MLflow model URI (registry alias/version, runs:/, models:/<id>, a folder)."""
    import mlflow

    from tuner.mlflow_store import mlflow_globals, open_client, store_unavailable, unavailable_error

    require_model_folder(model_uri)
    tracking_uri = resolve_tracking_uri(mlflow_uri)
    if model_uri.startswith(("models:/", "runs:/")):
        _, tracking_uri = open_client(mlflow_uri, writes=False)
    try:
        with mlflow_globals(tracking_uri), _quiet_logger("torch.export"):
            return mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - damaged files make yaml, zipfile, torch and pickle raise anything
        if store_unavailable(err):  # not a wrong name or a damaged model: the store did not answer
            raise unavailable_error(tracking_uri, f"loading model {model_uri}", err, "nothing was changed") from None
        raise load_failure(model_uri, err) from None


# The libraries MLflow reads a model URI's storage with (s3://, gs://, wasbs://, http://): their errors are about
# reaching that storage, not about the model's files
STORAGE_CLIENTS = ("botocore", "boto3", "google", "azure", "requests", "urllib3")


def load_failure(model_uri: str, err: Exception) -> UserError:
    """Why `model_uri` could not be loaded (`err`), as one line with the fix."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        detail = " ".join(str(err).split())[:200]
        if "MLmodel" in detail:  # the URI names something, but not a logged model
            return UserError(f"cannot load model {model_uri}: it is not an MLflow model (no MLmodel file there); "
                             f"{MODEL_URI_FORMS}")
        hint = (f"check the name and alias/version (e.g. {DEFAULT_MODEL_URI}, promote one with "
                f"`python -m tuner.promote`)" if model_uri.startswith("models:/") else "check the URI")
        return UserError(f"cannot load model {model_uri}: {detail}; {hint}")
    if isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return UserError(f"cannot load model {model_uri}: a file of it is missing ({err}); {MODEL_REPAIR}")
    if isinstance(err, OSError):  # not the model's files: the URI's
        return UserError(f"cannot load model {model_uri}: {err}; check the URI")
    detail = " ".join(str(err).split())[:160]
    if type(err).__module__.partition(".")[0] in STORAGE_CLIENTS:  # no credentials, access denied, no such bucket
        return UserError(f"cannot load model {model_uri}: its storage did not serve it ({type(err).__name__}: "
                         f"{detail}); check the URI and this machine's credentials for that storage")
    return UserError(f"cannot load model {model_uri}: its files are damaged or incomplete ({type(err).__name__}: "
                     f"{detail}); {MODEL_REPAIR}")


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    # torch.export logs a damaged program's traceback as a warning before raising; the error below says it
    # in one line, so that traceback is only noise on stderr. A filter, not the logger's level: importing torch
    # (inside the load) sets the levels of its loggers again, and so does torch._logging.set_logs
    logger = logging.getLogger(name)
    quiet = _ErrorsOnly()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def require_model_folder(model_uri: str) -> None:
    """A --model-uri without a scheme is a local folder: refuse a file (a checkpoint, an image) or a folder
    without MLmodel here, with what to pass instead, before MLflow says `No such artifact: 'MLmodel'`."""
    if re.match(r"^https?://", model_uri, re.IGNORECASE) and "/mlflow-artifacts/artifacts" not in model_uri:
        # MLflow reads http(s) only through a tracking server's artifact proxy; any other address fails inside it
        raise UserError(f"--model-uri {excerpt(model_uri)} is a web address, which MLflow reads only from a tracking "
                        f"server's artifact proxy (.../api/2.0/mlflow-artifacts/artifacts/...); {MODEL_URI_FORMS}")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", model_uri):  # models:/, runs:/, file:/, s3:/ ...: MLflow's to read
        return
    path = Path(model_uri).expanduser()
    if path.is_file():
        raise UserError(f"--model-uri {model_uri} is a file, not an MLflow model folder (a tuner checkpoint .pt is "
                        f"registered by its sweep, not read here); {MODEL_URI_FORMS}")
    if path.is_dir() and not (path / "MLmodel").is_file():
        raise UserError(f"--model-uri {model_uri} is a folder without an MLmodel file, not an MLflow model folder; "
                        f"{MODEL_URI_FORMS}")
    if not path.exists():
        raise UserError(f"--model-uri {model_uri} is neither an MLflow URI nor an existing folder; "
                        f"{MODEL_URI_FORMS}")


def resolved_version(model_uri: str, mlflow_uri: str | None) -> dict[str, str] | None:
    """For `models:/NAME@ALIAS` or `models:/NAME/VERSION`: the registered version's number and lineage
    (sweep, trial, val acc); None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    from mlflow.exceptions import MlflowException

    from tuner.mlflow_store import open_client, store_unavailable, unavailable_error

    name, _, rest = model_uri[len("models:/"):].partition("@")
    client, uri = open_client(mlflow_uri, writes=False)  # predict only reads: a read-only store serves
    try:
        if rest:
            version = client.get_model_version_by_alias(name, rest)
        elif "/" in name:
            name, number = name.rsplit("/", 1)
            version = client.get_model_version(name, number)
        else:
            return None
    except MlflowException as err:
        if store_unavailable(err):
            raise unavailable_error(uri, f"reading model {model_uri}", err, "nothing was changed") from None
        raise UserError(f"cannot load model {model_uri}: {str(err).splitlines()[0][:200]}; check the name and "
                        f"alias/version (e.g. {DEFAULT_MODEL_URI}, promote one with `python -m tuner.promote`)"
                        ) from None
    tags = version.tags or {}
    return {"name": name, "version": str(version.version), "alias": rest or "",
            **{key: tags[key] for key in ("sweep", "trial_id", "val_acc") if key in tags}}


def classify(model: torch.nn.Module, images: np.ndarray, tta_flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(class index, probability) per image of an N x 32 x 32 x 3 uint8 batch."""
    indices, probabilities = classify_top(model, images, 1, tta_flip)
    return indices[:, 0], probabilities[:, 0]


def classify_top(model: torch.nn.Module, images: np.ndarray, k: int, tta_flip: bool = True,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per image, most probable first: (N x k indices, N x k probabilities)."""
    import torch

    from tuner.evaluate import preprocess, tta_logits

    with torch.no_grad():
        probabilities = torch.softmax(tta_logits(model, preprocess(images), tta_flip), dim=1)
    best, index = probabilities.topk(k, dim=1)
    return index.numpy(), best.numpy()


def top_k(value: str) -> int:
    """--top-k: 1 to 10 (CIFAR-10 has ten classes)."""
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number; give 1 to 10") from None
    if not 1 <= k <= 10:
        raise argparse.ArgumentTypeError(f"{k} is out of range; give 1 to 10 (CIFAR-10 has ten classes)")
    return k


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
    parser.add_argument("--top-k", type=top_k, default=1, metavar="K",
                        help="print the K most probable classes per image (1-10, default 1)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object on stdout: the model version and a result per image")
    parser.add_argument("--no-tta", dest="tta_flip", action="store_false", help="no flip test-time augmentation")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    with quiet_downloads():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    args = _parser().parse_args(argv)
    import numpy as np

    from tuner.data import LABEL_NAMES

    pixels: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for path in args.images:
        try:
            pixels[path] = read_image(path)
        except UserError as err:
            errors[path] = str(err)
    version = resolved_version(args.model_uri, args.mlflow_uri)
    if version is not None and not args.json:
        lineage = ", ".join(f"{key} {version[key]}" for key in ("sweep", "trial_id", "val_acc") if key in version)
        print(f"model {args.model_uri} = version {version['version']} of {version['name']}"
              + (f" ({lineage})" if lineage else ""), file=sys.stderr, flush=True)
    results: dict[str, list[tuple[str, float]]] = {}
    if pixels:
        model = load_model(args.model_uri, args.mlflow_uri)
        indices, probabilities = classify_top(model, np.stack(list(pixels.values())), args.top_k, args.tta_flip)
        for path, row, probs in zip(pixels, indices, probabilities):
            results[path] = [(LABEL_NAMES[int(i)], float(p)) for i, p in zip(row, probs)]
    if args.json:
        print(json.dumps({"model_uri": args.model_uri, "model_version": version, "images": [
            {"path": path, "error": errors[path]} if path in errors else
            {"path": path, "label": results[path][0][0], "probability": round(results[path][0][1], 6),
             "top_k": [{"label": label, "probability": round(p, 6)} for label, p in results[path]]}
            for path in args.images]}, indent=2))
    else:
        width = max(len(path) for path in args.images)
        for path in args.images:
            if path in errors:
                print(f"error: {errors[path]}", file=sys.stderr, flush=True)
                continue
            print(f"{path:{width}s}  " + "  ".join(f"{label:10s}  {p:.4f}" for label, p in results[path]),
                  flush=True)
    if errors:
        sys.exit(1 if results else 2)  # some files were not classified, the others were; or none could be


if __name__ == "__main__":
    from tuner.quick_exit import run_then_exit_quickly

    run_then_exit_quickly(main)
