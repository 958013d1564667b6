"""Data sources, caching, validation and the clear errors for missing or corrupt files."""
import gzip
import io
import tarfile
import time

import pytest
import torch

from bnstudy.config import DataConfig
from bnstudy.data import MNIST_FILES, augment, load, load_raw
from bnstudy.errors import ConfigError, DataError

from .conftest import have_real


def test_synthetic_is_fixed_and_normalized(tmp_data):
    a = load(DataConfig(name="synthetic", channels=3, size=32, train_size=256, test_size=64))
    assert a.train_x.shape == (256, 3, 32, 32) and a.test_x.shape == (64, 3, 32, 32)
    assert torch.allclose(a.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(a.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    raw1, raw2 = load_raw(DataConfig(name="synthetic")), load_raw(DataConfig(name="synthetic"))
    assert all(torch.equal(p, q) for p, q in zip(raw1, raw2))


def test_validation_split_is_held_out(tmp_data):
    d = load(DataConfig(name="synthetic", train_size=300, val_size=100))
    assert d.train_x.shape[0] == 200 and d.val_x.shape[0] == 100
    with pytest.raises(ConfigError, match="data.val_size"):
        load(DataConfig(name="synthetic", train_size=300, val_size=300))


def test_augment_is_a_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.manual_seed(0)
    y = augment(x, pad=2)
    assert y.shape == x.shape
    # pad=0: a crop is the identity, so only flips remain
    z = augment(x, pad=0)
    for i in range(2):
        assert torch.equal(z[i], x[i]) or torch.equal(z[i], x[i].flip(2))


def test_missing_data_names_files_and_both_env_vars(tmp_data, monkeypatch, tmp_path):
    monkeypatch.setenv("BNSTUDY_DATA_MIRROR", str(tmp_path / "empty"))
    for name in ("mnist", "cifar10_jpeg"):
        with pytest.raises(DataError) as e:
            load_raw(DataConfig(name=name, download=False))
        msg = str(e.value)
        assert "BNSTUDY_DATA_DIR" in msg and "BNSTUDY_DATA_MIRROR" in msg and "\n" not in msg
    assert "train-images-idx3-ubyte.gz" in str(pytest.raises(DataError, load_raw, DataConfig(name="mnist", download=False)).value)


def mnist_mirror(tmp_path, monkeypatch, content: bytes) -> None:
    """A mirror whose four MNIST .gz files all hold ``content``; BNSTUDY_DATA_MIRROR points at it."""
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    for f in MNIST_FILES:
        (mirror / f"{f}.gz").write_bytes(content)
    monkeypatch.setenv("BNSTUDY_DATA_MIRROR", str(tmp_path / "mirror"))


def test_truncated_mirror_file_is_named(tmp_data, monkeypatch, tmp_path):
    mnist_mirror(tmp_path, monkeypatch, gzip.compress(b"\0" * 4096)[:30])  # cut short
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is corrupt or truncated"):
        load_raw(DataConfig(name="mnist", download=False))


def test_corrupt_idx_content_is_an_error(tmp_data, monkeypatch, tmp_path):
    mnist_mirror(tmp_path, monkeypatch, gzip.compress(b"garbage" * 10))  # valid gzip, not IDX
    with pytest.raises(DataError, match="corrupt"):
        load_raw(DataConfig(name="mnist", download=False))


def test_incomplete_jpeg_archive_is_an_error(tmp_data, monkeypatch, tmp_path):
    from torchvision.io import encode_jpeg

    folder = tmp_path / "mirror" / "cifar10-jpeg"
    folder.mkdir(parents=True)
    jpg = encode_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8)).numpy().tobytes()
    with tarfile.open(folder / "cifar10-jpeg.tar", "w") as tf:
        info = tarfile.TarInfo("train/cat/0001.jpg")
        info.size = len(jpg)
        tf.addfile(info, io.BytesIO(jpg))
    monkeypatch.setenv("BNSTUDY_DATA_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(DataError, match="train has 1 images, expected 50000"):
        load_raw(DataConfig(name="cifar10_jpeg"))


def test_corrupt_cache_is_named(tmp_data):
    cache = tmp_data / "cache"
    cache.mkdir(parents=True)
    (cache / "mnist.v1.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="mnist.v1.pt is corrupt or truncated"):
        load_raw(DataConfig(name="mnist", download=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx_datasets(name):
    reason = have_real(name)
    if reason:
        pytest.skip(reason)
    tx, ty, vx, vy = load_raw(DataConfig(name=name))
    assert tx.shape == (60000, 1, 28, 28) and vx.shape == (10000, 1, 28, 28)
    assert torch.bincount(ty).tolist()[:1] == ([5923] if name == "mnist" else [6000])
    t0 = time.perf_counter()
    load_raw(DataConfig(name=name))  # from the cache now
    assert time.perf_counter() - t0 < 20  # generous: this is a sanity bound, the benchmark measures speed


@pytest.mark.slow
def test_real_cifar10_jpeg():
    reason = have_real("cifar10_jpeg")
    if reason:
        pytest.skip(reason)
    tx, ty, vx, vy = load_raw(DataConfig(name="cifar10_jpeg"))
    assert tx.shape == (50000, 3, 32, 32) and vx.shape == (10000, 3, 32, 32)
    assert torch.bincount(ty).tolist() == [5000] * 10 and torch.bincount(vy).tolist() == [1000] * 10
    assert 100 < float(tx.float().mean()) < 140  # natural images, not zeros or noise
