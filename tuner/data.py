"""CIFAR-10 as uint8 arrays: read the `cifar-10-batches-py` files, split, download, write synthetic copies.

The batches are read once, straight into N x 32 x 32 x 3 uint8 arrays (about 150 MB for the 50,000
training images); no per-image PIL anywhere. The validation split is carved from the training images,
stratified and seeded; a checkpoint records the split it trained on (`split_record`, `recorded_split`), so
a resumed run validates on the same held-out images. The official test batch is optional: the search never
reads it, only evaluation and promotion do (`load_test`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.config import MAX_SEED
from tuner.errors import UserError, excerpt

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PIXELS = 32 * 32 * 3
# The split is stratified: fewer validation images than classes leaves a class out of validation entirely.
MIN_VAL_SIZE = len(LABEL_NAMES)


def as_field(name: str, value: object) -> str:
    """How a setting is named in an error by default: `val_size=5000`, as a space file's `data:` section has it."""
    return f"{name}={value}"


# names a split setting in an error: (field name, value) -> e.g. `val_size=5000` or `--val-size 5000`
SettingName = Callable[[str, object], str]


@dataclass(frozen=True)
class ImageSet:
    """Images as N x 32 x 32 x 3 uint8 (RGB, HWC) and labels as N int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class SplitSettings:
    """How `load_splits` carved the training images: what a checkpoint records so that a resumed run trains and
    validates on the same images (`split_record`)."""

    val_size: int
    split_seed: int
    subset: int | None


@dataclass(frozen=True)
class DataSplits:
    train: ImageSet
    val: ImageSet
    # How load_splits made them. It travels with the images (to every trial and the final fit, through the object
    # store), so whatever trains on them records its split without being told again; None for splits put together
    # by hand (tests, benchmarks), whose checkpoints then record no split.
    settings: SplitSettings | None = None

    def fingerprint(self) -> str:
        """Short hash of the exact pixels and labels of both splits, for lineage tags."""
        return fingerprint(self.train, self.val)


def fingerprint(*sets: ImageSet) -> str:
    """Short hash of the exact pixels and labels of `sets`, in order: which images a figure was measured on."""
    digest = hashlib.sha256()
    for part in sets:
        digest.update(np.ascontiguousarray(part.images).data)
        digest.update(part.labels.astype(np.int64).data)
    return digest.hexdigest()[:16]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: numpy arrays and builtins, never arbitrary callables."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),  # protocol 2 writes an empty array's buffer as bytes() (empty batches)
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


REDOWNLOAD = "e.g. delete it and run again to download"


def read_batch(path: Path, source: str = REDOWNLOAD) -> ImageSet:
    """One `data_batch_*`/`test_batch` file as an ImageSet; a malformed file is a UserError naming it and
    where an intact copy comes from (`source`: a command that never downloads says another place)."""
    fix = f"replace {path} with an intact copy ({source})"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - garbage bytes make pickle raise almost anything (Overflow, Index...)
        raise UserError(f"{path} is not a readable CIFAR-10 batch ({err}): {fix}") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR-10 batch (no dict inside): {fix}")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserError(f"{path} has no 'data' array or no 'labels': {fix}")
    if data.ndim != 2 or data.shape[1] != PIXELS or data.dtype != np.uint8:
        raise UserError(f"{path} holds data of shape {data.shape} {data.dtype}, expected N x {PIXELS} uint8: {fix}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError):  # ragged or odd objects: not a list of class indices
        labels = np.asarray([], dtype=object)
    if labels.ndim == 1 and labels.size == 0:
        labels = labels.astype(np.int64)  # an empty batch file: numpy calls [] float
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(f"{path} holds labels of type {labels.dtype} (shape {labels.shape}), expected a list of "
                        f"class indices 0..9: {fix}")
    labels = labels.astype(np.int64)
    if len(labels) != len(data) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise UserError(f"{path} has {len(labels)} labels for {len(data)} images or labels outside 0..9: {fix}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored as RGB planes; we keep HWC
    return ImageSet(np.ascontiguousarray(images), labels)


def batches_folder(data_dir: str | Path) -> tuple[Path, bool]:
    """(the `cifar-10-batches-py` folder under data_dir, whether its five training batches are there); a
    data_dir that is a file, or a batches folder that is not a folder, is one line."""
    root = Path(data_dir).expanduser()
    batches = root / BATCH_DIR
    for path in (root, batches):
        if path.exists() and not path.is_dir():
            raise UserError(f"--data-dir {data_dir}: {path} is a file; give the folder that holds (or is to hold) "
                            f"{BATCH_DIR}/")
    return batches, all((batches / name).is_file() for name in TRAIN_FILES)


def data_status(data_dir: str | Path) -> str:
    """What a run will find under data_dir, in one line, from the folder listing alone (the dry run)."""
    batches, present = batches_folder(data_dir)
    if present:
        return f"data: {batches.resolve()} (the five training batches; each is checked as it is read)"
    return f"data: no CIFAR-10 in {batches.resolve()}: the run downloads it there first (about 170 MB)"


def locate(data_dir: str | Path, download: bool = True) -> Path:
    """The `cifar-10-batches-py` folder under data_dir; downloaded (md5-verified) if absent."""
    batches, present = batches_folder(data_dir)
    root = batches.parent
    if present:
        return batches  # present files are trusted but validated when read (no md5: copies get rebuilt)
    where = f"put the python-version CIFAR-10 batches in {batches} (data_batch_1..5, optional test_batch)"
    if not download:
        raise UserError(f"CIFAR-10 not found in {batches}: {where}, or allow the download")
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        failure = type(err).__name__
        raise UserError(f"CIFAR-10 not found in {batches} and the download failed ({failure}): {where}") from None
    return batches


def load_train(data_dir: str | Path, download: bool = True) -> ImageSet:
    """The 50,000 official training images (or whatever data_batch_1..5 hold), in file order."""
    batches = locate(data_dir, download)
    parts = [read_batch(batches / name) for name in TRAIN_FILES]
    return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def load_test(data_dir: str | Path, source: str = REDOWNLOAD) -> ImageSet | None:
    """The official test batch when present, else None: the test split is optional everywhere."""
    path = Path(data_dir).expanduser() / BATCH_DIR / TEST_FILE
    return read_batch(path, source) if path.exists() else None


def check_split_sizes(images: int, val_size: int, subset: int | None = None, named: SettingName = as_field,
                      where: str = "") -> None:
    """A UserError unless `val_size` leaves training images and `subset` is a positive count.

    `images`: how many training images there are (`where` says where they are, for the message); `named`
    spells a setting as the caller's user wrote it (a field, or a flag). Whether `subset` asks for more
    images than the split leaves is `load_splits`' question, once the split is made.
    """
    found = f"{images:,} training images{f' in {where}' if where else ''}"
    if images <= MIN_VAL_SIZE:
        raise UserError(f"{named('val_size', val_size)}: only {found}, too few to set {MIN_VAL_SIZE} (one per class) "
                        f"aside for validation and train on the rest; give a data folder with more images")
    if not MIN_VAL_SIZE <= val_size < images:
        raise UserError(f"{named('val_size', val_size)} must be between {MIN_VAL_SIZE} (one per class) and "
                        f"{images - 1:,} (the {found} less one to train on); give a value in that range")
    if subset is not None and subset <= 0:
        raise UserError(f"{named('subset', subset)} must be a positive number of training images")


def split_train_val(images: ImageSet, val_size: int, seed: int = 0,
                    named: SettingName = as_field) -> tuple[ImageSet, ImageSet]:
    """Stratified, seeded split: each class gives val_size/10 (+-1) images to validation.

    Both parts keep the original order of the images, so `subset` takes "the first N" of them.
    """
    check_split_sizes(len(images), val_size, named=named)
    rng = np.random.default_rng(seed)
    classes = np.unique(images.labels)
    per_class = np.full(len(classes), val_size // len(classes))
    per_class[: val_size % len(classes)] += 1
    val_index = []
    for label, count in zip(classes, per_class):
        members = np.flatnonzero(images.labels == label)
        if count >= len(members):  # a quietly smaller split, or a class with nothing left to train on
            raise UserError(f"{named('val_size', val_size)} needs {count:,} validation images of class {label}, "
                            f"which has {len(members):,} of the {len(images):,} training images; give a smaller "
                            "value or more images")
        val_index.append(rng.choice(members, size=count, replace=False))
    is_val = np.zeros(len(images), dtype=bool)
    is_val[np.concatenate(val_index)] = True
    return images.take(np.flatnonzero(~is_val)), images.take(np.flatnonzero(is_val))


def load_splits(
    data_dir: str | Path = "data",
    val_size: int = 5000,
    subset: int | None = None,
    seed: int = 0,
    download: bool = True,
    named: SettingName = as_field,
) -> DataSplits:
    """Train/validation splits of the training images; `subset` keeps the first N training images.

    A val_size or subset the images cannot give is a UserError (`named` spells the setting), never a
    quietly smaller split."""
    images = load_train(data_dir, download)
    where = str(Path(data_dir).expanduser() / BATCH_DIR)
    check_split_sizes(len(images), val_size, subset, named, where)
    train, val = split_train_val(images, val_size, seed, named)
    if subset is not None:
        if subset > len(train):
            raise UserError(f"{named('subset', subset)} asks for more training images than the {len(train):,} "
                            f"left of the {len(images):,} in {where} after {named('val_size', val_size)}; "
                            f"give at most {len(train):,}, or leave it out to train on all of them")
        train = train.take(np.arange(subset))
    return DataSplits(train, val, SplitSettings(val_size, seed, subset))


# The checkpoint key that records the data split a run trained on: SplitSettings' fields, the split's fingerprint
# and `train_on`. Every writer of checkpoints (python -m tuner.train, a sweep's trials, its final fit) builds it
# with `split_record` and every reader checks it with `recorded_split`, so that a resumed run validates on the same
# held-out images and never on images it trained on.
SPLIT_RECORD = "split"
# What a run trained on: `train` the training split (the validation split held out and scored each epoch); `all`
# the training and the validation split (a final fit with train_on all: nothing held out). A record written before
# `train_on` was recorded is `train`: only the final fit trains on both, and it recorded no split at all then.
TRAINED_ON = ("train", "all")
_SPLIT_NAMES = tuple(setting.name for setting in dataclasses.fields(SplitSettings))


def split_record(data: DataSplits, train_on: str = "train") -> dict[str, Any] | None:
    """The SPLIT_RECORD of a run on `data` (`train_on` as TRAINED_ON), or None when `data` does not say how it was
    split (made by hand, not by `load_splits`). It hashes every image: build it once per run, not per epoch."""
    if train_on not in TRAINED_ON:
        raise ValueError(f"train_on={train_on!r} is not one of {', '.join(TRAINED_ON)}")
    if data.settings is None:
        return None
    return {**dataclasses.asdict(data.settings), "fingerprint": data.fingerprint(), "train_on": train_on}


def recorded_split(state: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The split checkpoint `state` (called `name` in errors) trained on, as `split_record` writes it (`train_on`
    filled in for records older than it), or None for a checkpoint that records none (written before splits were
    recorded). A damaged record is one UserError."""
    record = state.get(SPLIT_RECORD)
    if record is None:
        return None

    def is_int(value: object, low: int, high: int | None = None) -> bool:
        # in range too: a split seed numpy refuses (-1) or a size no split can have would fail later, in numpy
        in_range = isinstance(value, int) and low <= value and (high is None or value <= high)
        return in_range and not isinstance(value, bool)

    if (not isinstance(record, Mapping) or any(key not in record for key in (*_SPLIT_NAMES, "fingerprint"))
            or not (is_int(record["val_size"], MIN_VAL_SIZE) and is_int(record["split_seed"], 0, MAX_SEED))
            or not (record["subset"] is None or is_int(record["subset"], 1))
            or not isinstance(record["fingerprint"], str) or record.get("train_on", "train") not in TRAINED_ON):
        raise UserError(f"{name}: its record of the data split is damaged ({excerpt(record)}); resume from an "
                        "intact copy, or start a new run without --resume")
    return {"train_on": "train", **record}


def write_synthetic_cifar10(
    out_dir: str | Path, n_train: int = 1000, n_test: int = 0, seed: int = 0, batches: int = 5
) -> Path:
    """Write a small, learnable CIFAR-10 look-alike in the official file format; returns its folder.

    Each class is a coloured blob at its own place on noise, so a few epochs learn it well above
    chance: tests can tell a working trainer from a broken one without the real data.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir) / BATCH_DIR
    out.mkdir(parents=True, exist_ok=True)

    def make(n: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 90, size=(n, 32, 32, 3), dtype=np.int64)
        for i, label in enumerate(labels):
            y, x = 4 + 6 * (label // 4), 4 + 7 * (label % 4)
            colour = np.array([(label * 70) % 256, (label * 130) % 256, 255 - label * 20])
            dy, dx = rng.integers(-2, 3, size=2)
            images[i, y + dy : y + dy + 8, x + dx : x + dx + 8] = colour
        rows = images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, PIXELS)  # -1 fails when n == 0
        return np.ascontiguousarray(rows), [int(v) for v in labels]

    per_batch = -(-n_train // batches)
    for b in range(batches):
        count = max(0, min(per_batch, n_train - b * per_batch))
        data, labels = make(count)
        _dump(out / TRAIN_FILES[b], {b"batch_label": f"synthetic {b + 1}".encode(), b"labels": labels, b"data": data})
    if n_test:
        data, labels = make(n_test)
        _dump(out / TEST_FILE, {b"batch_label": b"synthetic test", b"labels": labels, b"data": data})
    _dump(out / META_FILE, {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in LABEL_NAMES]})
    return out


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
