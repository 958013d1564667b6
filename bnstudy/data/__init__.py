"""Datasets held whole on the training device.

Each split is decoded once, cached as uint8 tensors in the data folder
(``BNSTUDY_DATA_DIR``, default ``data/`` in the project), normalised per
channel once, and batched by indexing a ``randperm``.

Where a dataset comes from, in order:

1. the prepared data folder (cache file, or torchvision's own files in it);
2. the offline mirror ``BNSTUDY_DATA_MIRROR`` (layout of ``shared/datasets/README.md``);
3. for ``cifar10_jpeg``, the compact form in the data folder (``compact/cifar10_jpeg.npz``,
   built by ``python -m bnstudy.data.compact build``; see :mod:`bnstudy.data.compact`);
4. torchvision's download, when ``data.download`` is true.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bnstudy.config import DataConfig
from bnstudy.data.jpeg import CIFAR_CLASSES, Raw, decode_jpegs, decode_tree, iter_folder, iter_tar
from bnstudy.data.paths import data_dir, mirror_dir, project_root
from bnstudy.errors import DataError

__all__ = ["CIFAR_CLASSES", "Data", "Raw", "SPECS", "Spec", "augment", "data_dir", "decode_jpegs", "load", "load_raw", "mirror_dir", "project_root", "spec"]

MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@dataclass(frozen=True)
class Spec:
    """Static facts about a dataset, known without loading it."""

    shape: tuple[int, int, int]
    train_size: int
    test_size: int
    num_classes: int = 10


SPECS: dict[str, Spec] = {
    "mnist": Spec((1, 28, 28), 60000, 10000),
    "fashion_mnist": Spec((1, 28, 28), 60000, 10000),
    "cifar10": Spec((3, 32, 32), 50000, 10000),
    "cifar10_jpeg": Spec((3, 32, 32), 50000, 10000),
}


# data.train_size on a dataset other than synthetic: a seeded subset of that many training examples, except this
# value (the default), which keeps the whole split: every run recorded before the key acted there holds it.
WHOLE = 2048
SUBSET_SEED = 1  # the subset is the same for every run (seed, variant) of a study, as the validation split is


def spec(cfg: DataConfig) -> Spec:
    """Shape and sizes of ``cfg.name`` (synthetic: from its config; a subset: the examples it keeps, plus data.val_size)."""
    if cfg.name == "synthetic":
        return Spec((cfg.channels, cfg.size, cfg.size), cfg.train_size, cfg.test_size, cfg.num_classes)
    try:
        s = SPECS[cfg.name]
    except KeyError:
        names = ", ".join([*SPECS, "synthetic"])
        raise DataError(f"unknown dataset '{cfg.name}'; choose one of: {names}") from None
    if cfg.train_size != WHOLE and 0 < cfg.train_size < s.train_size - cfg.val_size:
        return Spec(s.shape, cfg.train_size + cfg.val_size, s.test_size, s.num_classes)
    return s


@dataclass
class Data:
    """A dataset on one device: normalised float inputs (N, C, H, W) and int64 labels (N,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    num_classes: int
    mean: torch.Tensor  # (C,) of the raw [0, 1] training inputs
    std: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """Input shape (C, H, W)."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def _missing(name: str, what: str) -> DataError:
    return DataError(
        f"no {name} data: {what} not found in BNSTUDY_DATA_DIR={data_dir()} or "
        f"BNSTUDY_DATA_MIRROR={os.environ.get('BNSTUDY_DATA_MIRROR', '(unset)')}, and download "
        "failed or is off; set BNSTUDY_DATA_MIRROR to a folder laid out like shared/datasets, "
        "or allow data.download=true on a machine with internet"
    )


# ---------------------------------------------------------------- raw loaders
# Each returns uint8 tensors: train_x (N, C, H, W), train_y (N,), test_x, test_y.

def _load_idx(name: str, folder: str, tv_cls_name: str, download: bool) -> Raw:
    """MNIST-format datasets through torchvision, raw files prepared from the mirror if needed."""
    import torchvision

    root = data_dir()
    raw = root / tv_cls_name / "raw"
    if not all((raw / f).exists() for f in MNIST_FILES):
        mirror = mirror_dir()
        if mirror is not None and all((mirror / folder / f"{f}.gz").exists() for f in MNIST_FILES):
            raw.mkdir(parents=True, exist_ok=True)
            for f in MNIST_FILES:
                _gunzip(mirror / folder / f"{f}.gz", raw / f)
                _check_idx(raw / f, mirror / folder / f"{f}.gz", SPECS[name])
    cls = getattr(torchvision.datasets, tv_cls_name)
    files = ", ".join(f"{folder}/{f}.gz" for f in MNIST_FILES)
    if not _have(raw):
        if not download:
            raise _missing(name, files)
        try:
            for train in (True, False):
                cls(str(root), train=train, download=True)
        except Exception:  # noqa: BLE001 - offline machines fail in many ways
            raise _missing(name, files) from None
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as e:  # noqa: BLE001 - torchvision asserts, raises ValueError/RuntimeError on bad IDX
            raise DataError(
                f"{raw} holds a corrupt or truncated {name} file ({type(e).__name__}: {e}); delete the folder and re-run"
            ) from None
        out += [ds.data.unsqueeze(1).contiguous(), ds.targets.long()]
    return out[0], out[1], out[2], out[3]


def _check_idx(path: Path, src: Path, s: Spec) -> None:
    """An IDX file just prepared from ``src`` must hold the dataset's full split; else blame ``src``, not the copy."""
    with open(path, "rb") as f:
        head = f.read(4)
        dims = [int.from_bytes(f.read(4), "big") for _ in range(head[3] if len(head) == 4 else 0)]
    expected = s.train_size if path.name.startswith("train") else s.test_size
    size = 4 + 4 * len(dims) + (math.prod(dims) if dims else 0)
    if not dims or dims[0] != expected or path.stat().st_size != size:
        found = f"{dims[0]} of {expected} items, {path.stat().st_size} of {size} bytes" if dims else "no IDX header"
        path.unlink(missing_ok=True)  # the next start prepares it again, from a restored source
        raise DataError(f"{src} is incomplete ({found}); restore it (sha256sum -c SHA256SUMS in the mirror)")


def _have(raw: Path) -> bool:
    return all((raw / f).exists() for f in MNIST_FILES)


def _gunzip(src: Path, dst: Path) -> None:
    """Decompress ``src`` to ``dst`` atomically; a truncated archive is an error naming it."""
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # per process: parallel jobs of a sweep may prepare at once
    try:
        with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    except (OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{src} is corrupt or truncated ({e}); restore it (sha256sum -c SHA256SUMS in the mirror)") from None
    os.replace(tmp, dst)


def _load_cifar10(download: bool) -> Raw:
    """Exact CIFAR-10 (pickled batches) through torchvision."""
    import torchvision

    root = data_dir()
    folder = root / "cifar-10-batches-py"
    mirror = mirror_dir()
    archive = mirror / "cifar10" / "cifar-10-python.tar.gz" if mirror else None
    if not folder.exists() and archive is not None and archive.exists():
        try:
            with tarfile.open(archive) as tf:
                tf.extractall(root, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive} is corrupt or truncated ({e}); restore it") from None
    out = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download and not folder.exists())
        except RuntimeError:
            raise _missing("cifar10", "cifar10/cifar-10-python.tar.gz") from None
        except Exception as e:  # noqa: BLE001 - torchvision raises many types on a bad pickle
            if not folder.exists():
                raise _missing("cifar10", "cifar10/cifar-10-python.tar.gz") from None
            raise DataError(f"{folder} holds a corrupt CIFAR-10 batch ({e}); delete it and re-run") from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        out += [x, torch.tensor(ds.targets, dtype=torch.long)]
    return out[0], out[1], out[2], out[3]


def _load_cifar10_jpeg() -> Raw:
    """CIFAR-10 re-encoded as JPEG: class folders or an uncompressed tar, else the compact form (``compact/``)."""
    from bnstudy.data import compact  # here, not at the top: `python -m bnstudy.data.compact` would find it imported

    candidates = [data_dir() / "cifar10-jpeg"]
    mirror = mirror_dir()
    if mirror is not None:
        candidates.append(mirror / "cifar10-jpeg")
    for base in candidates:
        if (base / "train").is_dir() and (base / "test").is_dir():
            return decode_tree(iter_folder(base), str(base))
        tar = base / "cifar10-jpeg.tar"
        if tar.exists():
            return decode_tree(iter_tar(tar), str(tar))
    path = compact.default_path()
    if path.exists():
        return compact.read(path)
    raise _missing("cifar10_jpeg", "cifar10-jpeg/cifar10-jpeg.tar (or cifar10-jpeg/{train,test}/<class>/, or compact/cifar10_jpeg.npz in the data folder)")


def _synthetic(cfg: DataConfig) -> Raw:
    """A small learnable image set: class prototypes plus noise, fixed whatever the run's seed."""
    g = torch.Generator().manual_seed(1234)
    c, s, k = cfg.channels, cfg.size, cfg.num_classes
    protos = torch.rand(k, c, s, s, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, k, (n,), generator=g)
        x = 0.6 * protos[y] + 0.4 * torch.rand(n, c, s, s, generator=g)
        return (x * 255).round().to(torch.uint8), y

    tx, ty = make(cfg.train_size)
    vx, vy = make(cfg.test_size)
    return tx, ty, vx, vy


# ---------------------------------------------------------------- cache and assembly

_CACHE_VERSION = 1


def cache_path(name: str) -> Path:
    """Where the prepared tensors of dataset ``name`` are cached."""
    return data_dir() / "cache" / f"{name}.v{_CACHE_VERSION}.pt"


def load_raw(cfg: DataConfig) -> Raw:
    """uint8 splits of ``cfg.name``: from the cache, else decoded from its source and cached."""
    if cfg.name == "synthetic":
        return _synthetic(cfg)
    spec(cfg)  # unknown names fail here
    path = cache_path(cfg.name)
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            raw = (blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"])
            _check(cfg.name, raw, str(path))
            return raw
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable cache is reported the same way
            raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}); delete it and re-run") from None
    if cfg.name == "mnist":
        raw = _load_idx("mnist", "mnist", "MNIST", cfg.download)
    elif cfg.name == "fashion_mnist":
        raw = _load_idx("fashion_mnist", "fashion-mnist", "FashionMNIST", cfg.download)
    elif cfg.name == "cifar10":
        raw = _load_cifar10(cfg.download)
    else:
        raw = _load_cifar10_jpeg()
    _check(cfg.name, raw, "decoded data")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"train_x": raw[0], "train_y": raw[1], "test_x": raw[2], "test_y": raw[3]}, tmp)
    os.replace(tmp, path)
    return raw


def _check(name: str, raw: Raw, where: str) -> None:
    s = SPECS[name]
    tx, ty, vx, vy = raw
    ok = (
        tuple(tx.shape) == (s.train_size, *s.shape)
        and tuple(vx.shape) == (s.test_size, *s.shape)
        and ty.shape == (s.train_size,)
        and vy.shape == (s.test_size,)
        and tx.dtype == torch.uint8
        and int(ty.min()) >= 0
        and int(ty.max()) < s.num_classes
    )
    if not ok:
        raise DataError(f"{where} does not hold a valid {name} (shapes {tuple(tx.shape)}, {tuple(vx.shape)}); delete it and re-run")


_LOADED: dict[tuple, Data] = {}


def load(cfg: DataConfig, device: torch.device | str = "cpu") -> Data:
    """The dataset on ``device``, normalised; reused within a process (one load per sweep worker)."""
    key = (cfg.name, cfg.val_size, cfg.normalize, str(device), cfg.channels, cfg.size, cfg.train_size, cfg.test_size, cfg.num_classes)
    if key not in _LOADED:
        _LOADED.clear()  # hold one dataset at a time; sweeps are usually over one
        _LOADED[key] = _assemble(cfg, torch.device(device))
    return _LOADED[key]


def _assemble(cfg: DataConfig, device: torch.device) -> Data:
    tx, ty, vx, vy = load_raw(cfg)
    n = tx.shape[0]
    if not 0 <= cfg.val_size < n:
        from bnstudy.errors import ConfigError

        raise ConfigError(f"data.val_size must be in [0, {n}) (got {cfg.val_size})")
    val_x = val_y = None
    if cfg.val_size:
        # a fixed split (independent of the run's seed) so every run validates on the same images
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        val_idx, tr_idx = perm[: cfg.val_size], perm[cfg.val_size :]
        val_x, val_y, tx, ty = tx[val_idx], ty[val_idx], tx[tr_idx], ty[tr_idx]
    if cfg.name != "synthetic" and cfg.train_size != WHOLE and cfg.train_size < tx.shape[0]:
        # data.train_size: a fixed subset of the training examples left after validation (sorted: their order stays)
        keep = torch.randperm(tx.shape[0], generator=torch.Generator().manual_seed(SUBSET_SEED))[: cfg.train_size].sort().values
        tx, ty = tx[keep], ty[keep]
    tx_f = tx.to(device).float().div_(255)
    mean = tx_f.mean(dim=(0, 2, 3))
    std = tx_f.std(dim=(0, 2, 3))
    if not cfg.normalize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)

    def norm(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).float().div_(255) if x.dtype == torch.uint8 else x
        return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))

    return Data(
        name=cfg.name,
        train_x=norm(tx_f),
        train_y=ty.to(device),
        test_x=norm(vx),
        test_y=vy.to(device),
        val_x=norm(val_x) if val_x is not None else None,
        val_y=val_y.to(device) if val_y is not None else None,
        num_classes=spec(cfg).num_classes,
        mean=mean.cpu(),
        std=std.cpu(),
    )


def augment(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batched random crop (zero-pad by ``pad``, crop back) and horizontal flip of (B, C, H, W)."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[bidx, cidx, rows, cols]  # (B, C, H, W)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
