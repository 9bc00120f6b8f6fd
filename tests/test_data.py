"""CIFAR-10 as uint8 arrays: reading, refusing bad or hostile files, stratified seeded splits, lineage."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from tuner.data import (
    BATCH_DIR,
    TEST_FILE,
    TRAIN_FILES,
    DataSplits,
    ImageSet,
    load_splits,
    load_test,
    load_train,
    locate,
    read_batch,
    split_train_val,
    write_synthetic_cifar10,
)
from tuner.errors import UserError

N_TRAIN = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=N_TRAIN, n_test=40)
    return root


def dump(path: Path, obj: object) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def indexed_images(labels: np.ndarray) -> ImageSet:
    """Images whose first two bytes spell their own index, so a split can be traced back."""
    images = np.zeros((len(labels), 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    images[:, 0, 0, 1] = np.arange(len(labels)) // 256
    return ImageSet(images, labels.astype(np.int64))


def index_of(images: ImageSet) -> np.ndarray:
    return images.images[:, 0, 0, 0].astype(np.int64) + 256 * images.images[:, 0, 0, 1].astype(np.int64)


def test_synthetic_data_loads_as_uint8_hwc_images_and_int64_labels(data_dir: Path) -> None:
    train = load_train(data_dir, download=False)
    assert train.images.shape == (N_TRAIN, 32, 32, 3)
    assert train.images.dtype == np.uint8
    assert train.labels.shape == (N_TRAIN,)
    assert train.labels.dtype == np.int64
    assert 0 <= train.labels.min() and train.labels.max() <= 9
    assert len(np.unique(train.labels)) == 10


@pytest.mark.parametrize("n_train", [11, 16, 3])
def test_synthetic_writer_handles_sizes_that_leave_a_batch_file_empty(tmp_path: Path, n_train: int) -> None:
    write_synthetic_cifar10(tmp_path, n_train=n_train)
    assert len(load_train(tmp_path, download=False)) == n_train


def test_batches_stored_as_rgb_planes_are_read_as_hwc_pixels(tmp_path: Path) -> None:
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[0, :1024] = 255  # image 0: the whole red plane
    data[1, 1024 + 1 * 32 + 2] = 7  # image 1: green at row 1, column 2
    batch = read_batch(dump(tmp_path / "data_batch_1", {b"data": data, b"labels": [3, 4]}))
    assert (batch.images[0, :, :, 0] == 255).all()
    assert (batch.images[0, :, :, 1:] == 0).all()
    assert batch.images[1, 1, 2, 1] == 7
    assert batch.images[1].sum() == 7
    assert batch.labels.tolist() == [3, 4]


def test_split_is_stratified_disjoint_and_covers_every_image() -> None:
    labels = np.random.default_rng(1).integers(0, 10, size=700)
    images = indexed_images(labels)
    train, val = split_train_val(images, val_size=103, seed=0)
    assert len(val) == 103 and len(train) == 700 - 103
    per_class = np.bincount(val.labels, minlength=10)
    assert per_class.max() - per_class.min() <= 1
    train_index, val_index = index_of(train), index_of(val)
    assert not set(train_index) & set(val_index)
    assert sorted([*train_index, *val_index]) == list(range(700))
    # both parts keep the original order, and each image keeps its own label
    assert (np.diff(train_index) > 0).all() and (np.diff(val_index) > 0).all()
    assert (labels[val_index] == val.labels).all() and (labels[train_index] == train.labels).all()


def test_split_is_seeded() -> None:
    images = indexed_images(np.random.default_rng(2).integers(0, 10, size=500))
    first = index_of(split_train_val(images, 50, seed=3)[1])
    again = index_of(split_train_val(images, 50, seed=3)[1])
    other = index_of(split_train_val(images, 50, seed=4)[1])
    assert (first == again).all()
    assert set(first) != set(other)


@pytest.mark.parametrize("val_size", [0, -5, 300])
def test_impossible_val_size_is_a_user_error(val_size: int) -> None:
    images = indexed_images(np.arange(300) % 10)
    with pytest.raises(UserError, match="val_size"):
        split_train_val(images, val_size)


def test_subset_keeps_the_first_images_of_the_train_split(data_dir: Path) -> None:
    full = load_splits(data_dir, val_size=50, seed=0, download=False)
    small = load_splits(data_dir, val_size=50, subset=30, seed=0, download=False)
    assert len(small.train) == 30
    assert (small.train.images == full.train.images[:30]).all()
    assert (small.train.labels == full.train.labels[:30]).all()
    assert (small.val.images == full.val.images).all()  # subset never touches validation


def test_subset_must_be_positive(data_dir: Path) -> None:
    with pytest.raises(UserError, match="subset"):
        load_splits(data_dir, val_size=50, subset=0, download=False)


@pytest.mark.parametrize("val_size", [1, 9])
def test_val_size_below_one_image_per_class_is_refused_with_the_bound_the_flags_use(val_size: int) -> None:
    images = indexed_images(np.arange(300) % 10)
    with pytest.raises(UserError, match=rf"val_size={val_size} must be between 10 \(one per class\) and 299"):
        split_train_val(images, val_size)


def test_subset_above_the_training_split_is_refused_not_trained_on_fewer(data_dir: Path) -> None:
    left = N_TRAIN - 50
    assert len(load_splits(data_dir, val_size=50, subset=left, download=False).train) == left  # all of them: fine
    with pytest.raises(UserError) as caught:
        load_splits(data_dir, val_size=50, subset=left + 1, download=False)
    message = str(caught.value)
    assert f"subset={left + 1} asks for more training images than the {left} left" in message
    assert str(data_dir / BATCH_DIR) in message and f"give at most {left}" in message


def test_val_size_a_class_cannot_give_is_refused_not_a_smaller_split() -> None:
    labels = np.arange(300) % 10
    labels[labels == 3] = 4
    labels[:5] = 3  # class 3: 5 images, but 100 validation images ask 10 of each class
    with pytest.raises(UserError, match="val_size=100 needs 10 validation images of class 3, which has 5"):
        split_train_val(indexed_images(labels), 100)


def test_split_errors_spell_the_settings_as_the_caller_names_them(data_dir: Path) -> None:
    def as_flag(name: str, value: object) -> str:
        return f"--{name.replace('_', '-')} {value}"

    with pytest.raises(UserError, match=r"^--val-size 5000 must be between 10"):
        load_splits(data_dir, val_size=5000, download=False, named=as_flag)
    with pytest.raises(UserError, match=r"^--subset 1000 asks for more .* after --val-size 50;"):
        load_splits(data_dir, val_size=50, subset=1000, download=False, named=as_flag)


def test_test_split_is_none_without_test_batch(tmp_path: Path) -> None:
    write_synthetic_cifar10(tmp_path, n_train=20, n_test=0)
    assert load_test(tmp_path) is None


def test_test_split_is_read_when_test_batch_is_present(data_dir: Path) -> None:
    test = load_test(data_dir)
    assert isinstance(test, ImageSet)
    assert test.images.shape == (40, 32, 32, 3) and test.images.dtype == np.uint8
    assert test.labels.shape == (40,)


@pytest.fixture
def batch_path(tmp_path: Path) -> Path:
    """An intact synthetic data_batch_1 in its own folder, for damaging."""
    return write_synthetic_cifar10(tmp_path, n_train=50, batches=1) / TRAIN_FILES[0]


def test_truncated_batch_is_a_user_error_naming_the_file(batch_path: Path) -> None:
    raw = batch_path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 1, 5):
        batch_path.write_bytes(raw[:cut])
        with pytest.raises(UserError, match=re.escape(str(batch_path))):
            read_batch(batch_path)


def test_garbage_batch_is_a_user_error_naming_the_file(batch_path: Path) -> None:
    rng = np.random.default_rng(0)
    for attempt in range(200):  # random bytes make pickle fail in many different ways
        prefix = b"\x80\x02" if attempt % 2 else b""
        batch_path.write_bytes(prefix + rng.integers(0, 256, size=int(rng.integers(1, 200)), dtype=np.uint8).tobytes())
        with pytest.raises(UserError, match=re.escape(str(batch_path))):
            read_batch(batch_path)


@pytest.mark.parametrize(
    "content",
    [
        {b"data": np.zeros((4, 1024), dtype=np.uint8), b"labels": [0, 1, 2, 3]},  # wrong row size
        {b"data": np.zeros((4, 3072), dtype=np.float32), b"labels": [0, 1, 2, 3]},  # wrong dtype
        {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1]},  # labels do not match
        {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 12]},  # label outside 0..9
        {b"labels": [0]},  # no data
        [1, 2, 3],  # not a dict
    ],
    ids=["shape", "dtype", "label-count", "label-range", "no-data", "not-a-dict"],
)
def test_malformed_batch_is_a_user_error_naming_the_file(batch_path: Path, content: object) -> None:
    dump(batch_path, content)
    with pytest.raises(UserError, match=re.escape(str(batch_path))):
        read_batch(batch_path)


def test_damaged_batch_stops_load_train_with_its_name(batch_path: Path) -> None:
    root = batch_path.parent.parent
    write_synthetic_cifar10(root, n_train=50)
    damaged = root / BATCH_DIR / TRAIN_FILES[3]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(UserError, match=TRAIN_FILES[3]):
        load_train(root, download=False)


class _RunsCommand:
    """Unpickling this calls os.system: what a hostile 'CIFAR batch' would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _Evaluates:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("__import__('os').getpid()",)


def test_pickle_that_calls_os_system_is_refused(batch_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    dump(batch_path, {b"data": _RunsCommand(f"touch {marker}"), b"labels": [0]})
    assert b"system" in batch_path.read_bytes()  # the payload is really in the file
    with pytest.raises(UserError, match="refusing to load"):
        read_batch(batch_path)
    assert not marker.exists()


def test_pickle_that_calls_eval_is_refused(batch_path: Path) -> None:
    dump(batch_path, {b"data": _Evaluates(), b"labels": [0]})
    with pytest.raises(UserError, match=r"refusing to load (__builtin__|builtins)\.eval"):
        read_batch(batch_path)


def test_missing_data_without_download_says_where_to_put_the_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as caught:
        load_train(missing, download=False)
    message = str(caught.value)
    assert str(missing / BATCH_DIR) in message
    assert "data_batch_1..5" in message
    assert not missing.exists()  # nothing created as a side effect


def test_locate_needs_all_five_training_batches_and_no_test_batch(tmp_path: Path) -> None:
    batches = write_synthetic_cifar10(tmp_path, n_train=20, n_test=0)
    assert not (batches / TEST_FILE).exists()
    assert locate(tmp_path, download=False) == tmp_path / BATCH_DIR
    (batches / TRAIN_FILES[4]).unlink()
    with pytest.raises(UserError, match=re.escape(str(batches))):
        locate(tmp_path, download=False)


def test_fingerprint_is_stable_and_sees_a_single_label_change(data_dir: Path) -> None:
    splits = load_splits(data_dir, val_size=50, download=False)
    again = load_splits(data_dir, val_size=50, download=False)
    assert splits.fingerprint() == again.fingerprint()
    assert len(splits.fingerprint()) == 16
    labels = splits.val.labels.copy()
    labels[7] = (labels[7] + 1) % 10
    relabelled = DataSplits(splits.train, ImageSet(splits.val.images, labels))
    assert relabelled.fingerprint() != splits.fingerprint()
    pixels = splits.train.images.copy()
    pixels[0, 0, 0, 0] ^= 1
    assert DataSplits(ImageSet(pixels, splits.train.labels), splits.val).fingerprint() != splits.fingerprint()


def test_fingerprint_tells_a_different_split_seed_apart(data_dir: Path) -> None:
    first = load_splits(data_dir, val_size=50, seed=0, download=False)
    other = load_splits(data_dir, val_size=50, seed=1, download=False)
    assert first.fingerprint() != other.fingerprint()


@pytest.mark.parametrize("labels", [["cat"], ["3"], [1.5], [True], [[1, 2]]])
def test_labels_that_are_not_class_indices_are_one_clear_error(tmp_path: Path, labels: list) -> None:
    write_synthetic_cifar10(tmp_path, n_train=20, seed=0)
    path = tmp_path / BATCH_DIR / "data_batch_1"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"] = labels * len(batch[b"labels"])
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(UserError, match="expected a list of class indices"):
        read_batch(path)
