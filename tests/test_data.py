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


def _jpeg(pixels: torch.Tensor, quality: int = 95) -> bytes:
    """(C, H, W) uint8 -> JPEG bytes, encoded by Pillow."""
    from PIL import Image

    arr = pixels.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_jpegs_decode_without_deprecated_apis():
    """Pillow decodes: no DeprecationWarning (torchvision 0.29 deprecates its decoder), RGB out, grey expanded."""
    import warnings

    import numpy as np
    from PIL import Image

    from bnstudy.data import decode_jpegs

    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    colour = torch.stack([x * 8, y * 8, (x + y) * 4]).to(torch.uint8)  # smooth gradients: JPEG keeps them closely
    grey = (x * 8).to(torch.uint8)[None]
    blobs = [_jpeg(colour), _jpeg(grey)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_jpegs(blobs, "test")
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert (out[0].int() - colour.int()).abs().float().mean() < 3
    assert torch.equal(out[1, 0], out[1, 1]) and torch.equal(out[1, 0], out[1, 2])
    direct = np.array(Image.open(io.BytesIO(blobs[0])).convert("RGB"))
    assert torch.equal(out[0], torch.from_numpy(direct).permute(2, 0, 1))
    with pytest.raises(DataError, match="test: image 1 is not a readable JPEG"):
        decode_jpegs([blobs[0], blobs[0][: len(blobs[0]) // 2]], "test")
    with pytest.raises(DataError, match="image 1 is 16x16, the first was 32x32"):
        decode_jpegs([blobs[0], _jpeg(colour[:, :16, :16])], "test")


def test_incomplete_jpeg_archive_is_an_error(tmp_data, monkeypatch, tmp_path):
    folder = tmp_path / "mirror" / "cifar10-jpeg"
    folder.mkdir(parents=True)
    jpg = _jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8))
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
def test_cifar10_jpeg_pixels_are_those_the_committed_runs_used(tmp_data):
    """Decoded from the archive (no cache), the pixels hash to what torchvision's decoder gave the committed cifar_vgg runs.

    One decode of the 60,000 JPEGs (the slowest data test): nothing is looked for or cached before it.
    """
    import hashlib

    from bnstudy.data import _load_cifar10_jpeg

    try:
        tx, ty, vx, vy = raw = _load_cifar10_jpeg()
    except DataError as e:
        pytest.skip(f"no cifar10_jpeg source on this machine ({e})")
    assert tx.shape == (50000, 3, 32, 32) and vx.shape == (10000, 3, 32, 32)
    assert torch.bincount(ty).tolist() == [5000] * 10 and torch.bincount(vy).tolist() == [1000] * 10
    assert 100 < float(tx.float().mean()) < 140  # natural images, not zeros or noise
    digests = [hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16] for t in raw]
    assert digests == ["f12bc101717acd0d", "a2084e87c76d1d22", "2fb7dfcd1893f37e", "c5575395e636cadc"]


def test_parallel_jobs_can_prepare_the_same_files(tmp_path, monkeypatch):
    # two jobs of a sweep decompress the same mirror file at once: each needs its own temp file,
    # or the first to finish renames the other's away ("No such file ... .tmp")
    import os

    import bnstudy.data as data_lib

    src = tmp_path / "f.gz"
    src.write_bytes(gzip.compress(b"x" * 1000))
    dst = tmp_path / "f"
    import shutil

    real_copy, pids = shutil.copyfileobj, iter([111, 222])
    monkeypatch.setattr(os, "getpid", lambda: next(pids, 333))
    state = {"nested": False}

    def copy_and_race(fi, fo, *a):
        if not state["nested"]:
            state["nested"] = True
            data_lib._gunzip(src, dst)  # the other job, start to finish, while this one is writing
        return real_copy(fi, fo, *a)

    monkeypatch.setattr(shutil, "copyfileobj", copy_and_race)
    data_lib._gunzip(src, dst)
    assert dst.read_bytes() == b"x" * 1000
    assert not list(tmp_path.glob("*.tmp"))
