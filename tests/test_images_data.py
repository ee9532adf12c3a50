"""Image data sets: IDX parsing, folders of class sub-folders, drawn shapes, labels, clear errors.
Every image here is drawn by the test itself; the real Fashion-MNIST is never read."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data.images import (
    FASHION_MNIST_CLASSES,
    ImageDataConfig,
    draw_shapes,
    load_image_data,
    read_idx,
    resolve_label,
)
from genlab.errors import ConfigError, DataError


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 20, n_test: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """IDX files in Fashion-MNIST's layout, holding drawn shapes at 28 px."""
    root.mkdir(parents=True, exist_ok=True)
    train, test = draw_shapes(n_train, 28, 1, seed=3), draw_shapes(n_test, 28, 1, seed=4)
    write_idx(root / "train-images-idx3-ubyte.gz", train.images[:, 0])
    write_idx(root / "train-labels-idx1-ubyte.gz", train.labels)
    write_idx(root / "t10k-images-idx3-ubyte.gz", test.images[:, 0])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test.labels)
    return train.images, train.labels


def write_folder(root: Path, per_class: dict[str, int], size: int = 20, rgb: bool = True) -> None:
    """Class sub-folders of PNG (and one JPEG) images of different sizes and modes."""
    for c, (name, count) in enumerate(per_class.items()):
        shapes = draw_shapes(count, size, 3 if rgb else 1, seed=10 + c)
        (root / name).mkdir(parents=True)
        for i, img in enumerate(shapes.images):
            arr = img.transpose(1, 2, 0)
            im = Image.fromarray(arr if rgb else arr[..., 0])
            im = im.resize((size + 7 * i, size))  # not square: exercises the centre crop
            im.save(root / name / (f"{i}.jpg" if i == 0 else f"{i}.png"))


def test_fashion_mnist_idx_files_are_parsed_with_the_standard_split(tmp_path, monkeypatch):
    images, labels = fake_fashion_mnist(tmp_path / "fm")
    monkeypatch.setenv("GENLAB_FASHION_MNIST", str(tmp_path / "fm"))
    data = load_image_data(ImageDataConfig("fashion-mnist", image_size=28, channels=1))
    assert data.class_names == list(FASHION_MNIST_CLASSES)
    assert data.train.images.shape == (20, 1, 28, 28) and len(data.test) == 8
    assert np.array_equal(data.train.images, images) and np.array_equal(data.train.labels, labels)
    # Resized to 32 px RGB: the three channels are equal copies of the gray image.
    big = load_image_data(ImageDataConfig("fashion-mnist", image_size=32, channels=3))
    assert big.train.images.shape == (20, 3, 32, 32)
    assert np.array_equal(big.train.images[:, 0], big.train.images[:, 2])
    assert big.fingerprint != data.fingerprint
    assert big.meta()["class_names"][3] == "Dress" and big.meta()["image_size"] == 32


def test_missing_fashion_mnist_names_make_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="make setup"):
        load_image_data(ImageDataConfig("fashion-mnist"))


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    raw = gzip.decompress(path.read_bytes())[:-10]
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="truncated or corrupted"):
        read_idx(path)


def test_folder_classes_split_and_cache(tmp_path):
    write_folder(tmp_path / "imgs", {"b_square": 6, "a_circle": 10})
    cfg = ImageDataConfig(str(tmp_path / "imgs"), image_size=16, channels=3, test_fraction=0.2)
    data = load_image_data(cfg)
    assert data.class_names == ["a_circle", "b_square"]  # folder names, sorted
    assert len(data.train) + len(data.test) == 16
    assert sorted(data.test.labels.tolist()) == [0, 0, 1]  # round(10 * .2), max(1, round(6 * .2))
    assert data.train.images.shape[1:] == (3, 16, 16) and data.train.images.dtype == np.uint8
    again = load_image_data(cfg)  # from the cache: the same arrays and fingerprint
    assert np.array_equal(again.train.images, data.train.images) and again.fingerprint == data.fingerprint
    gray = load_image_data(ImageDataConfig(str(tmp_path / "imgs"), image_size=16, channels=1))
    assert gray.train.images.shape[1] == 1
    # A changed file changes the content, so the fingerprint moves too.
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "imgs" / "a_circle" / "1.png")
    assert load_image_data(cfg).fingerprint != data.fingerprint


def test_folder_without_class_folders_is_one_class(tmp_path):
    root = tmp_path / "flowers"
    root.mkdir()
    for i in range(3):
        Image.new("L", (10, 12), 40 * i).save(root / f"{i}.png")
    data = load_image_data(ImageDataConfig(str(root), image_size=8, channels=1))
    assert data.class_names == ["flowers"] and len(data.train) + len(data.test) == 3


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "mixed"])
def test_bad_folders_are_clear_errors(tmp_path, case):
    root = tmp_path / "data"
    if case != "missing":
        (root / "cats").mkdir(parents=True)
        (root / "cats" / "notes.txt").write_text("not an image")
    if case == "corrupt":
        Image.new("L", (8, 8)).save(root / "cats" / "ok.png")
        (root / "cats" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    if case == "mixed":
        Image.new("L", (8, 8)).save(root / "cats" / "ok.png")
        Image.new("L", (8, 8)).save(root / "loose.png")
    expected = {"missing": "not found", "empty": "no PNG or JPEG images", "corrupt": r"bad\.png",
                "mixed": "both at the top and in sub-folders"}[case]
    with pytest.raises(DataError, match=expected):
        load_image_data(ImageDataConfig(str(root), image_size=8))


def test_labels_resolve_by_name_or_index():
    names = list(FASHION_MNIST_CLASSES)
    assert resolve_label("Dress", names) == 3
    assert resolve_label("ankle boot", names) == 9
    assert resolve_label("7", names) == 7 and resolve_label(2, names) == 2
    with pytest.raises(ConfigError, match="unknown label 'Hat'.*Dress"):
        resolve_label("Hat", names)
    with pytest.raises(ConfigError, match="out of range"):
        resolve_label(10, names)


def test_shapes_are_seeded_and_batches_follow_the_rng():
    a, b = draw_shapes(12, 16, 1, seed=5), draw_shapes(12, 16, 1, seed=5)
    assert np.array_equal(a.images, b.images) and set(a.labels.tolist()) <= {0, 1, 2, 3}
    assert a.images.max() >= 128 and a.images.min() == 0  # a bright shape on black
    x1, y1 = a.batch(np.random.default_rng(1), 5)
    x2, y2 = a.batch(np.random.default_rng(1), 5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_two_writers_of_one_cache_entry_do_not_trip_over_each_other(tmp_path):
    """Two trainings on one new folder both build its cache entry; each writer's temporary file is its
    own, so neither renames the other's away (a fixed `name.tmp` made one of them crash)."""
    import threading

    from genlab import runs

    target, errors = tmp_path / "entry.npz", []

    def write(payload: bytes) -> None:
        try:
            for _ in range(200):
                runs.atomic_write_bytes(target, payload)
        except OSError as e:  # pragma: no cover - the failure this test is for
            errors.append(e)

    threads = [threading.Thread(target=write, args=(bytes([i]) * 4096,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in {bytes([i]) * 4096 for i in range(4)}  # whole, from one writer
    assert [p.name for p in tmp_path.iterdir()] == ["entry.npz"]  # no temporary file left behind
