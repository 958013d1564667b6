"""CIFAR-10-JPEG: reading class folders or a tar, and decoding JPEG bytes to pixels with Pillow."""
from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from bnstudy.errors import DataError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLITS = (("train", 50000), ("test", 10000))

# Each raw loader returns uint8 tensors: train_x (N, C, H, W), train_y (N,), test_x, test_y.
Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Item = tuple[str, str, str, bytes]  # split, class, file name, JPEG bytes


def iter_folder(base: Path) -> Iterator[Item]:
    """The JPEGs of ``base/{train,test}/<class>/*.jpg``."""
    for split in ("train", "test"):
        for cls in CIFAR_CLASSES:
            for p in sorted((base / split / cls).glob("*.jpg")):
                yield split, cls, p.name, p.read_bytes()


def iter_tar(path: Path) -> Iterator[Item]:
    """The JPEGs of an uncompressed tar laid out as ``…/{train,test}/<class>/*.jpg``."""
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile() or not m.name.endswith(".jpg"):
                    continue
                parts = Path(m.name).parts
                if len(parts) < 3:
                    continue
                split, cls = parts[-3], parts[-2]
                f = tf.extractfile(m)
                yield split, cls, parts[-1], f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); restore it (sha256sum -c SHA256SUMS in the mirror)") from None


def decode_jpegs(blobs: list[bytes], where: str) -> torch.Tensor:
    """JPEG files' bytes -> one uint8 tensor (N, 3, H, W) of RGB pixels, decoded by Pillow.

    It replaces torchvision's ``decode_jpeg`` (deprecated since torchvision 0.29),
    which decoded the committed ``cifar_vgg`` runs: on all 60,000 images of the
    CIFAR-10-JPEG archive the two give identical pixels, so caches and results
    made with either agree.
    """
    import io

    import numpy as np
    from PIL import Image

    if not blobs:
        return torch.empty(0, 3, 32, 32, dtype=torch.uint8)
    out: np.ndarray | None = None
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                if im.format != "JPEG":
                    raise OSError(f"a {im.format} image, not a JPEG")
                pixels = np.asarray(im.convert("RGB"))  # (H, W, 3); a grey JPEG gets its channel repeated
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{where}: image {i} is not a readable JPEG ({e}); restore the archive") from None
        if out is None:
            out = np.empty((len(blobs), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != out.shape[1:]:
            raise DataError(f"{where}: image {i} is {pixels.shape[1]}x{pixels.shape[0]}, the first was {out.shape[2]}x{out.shape[1]}")
        out[i] = pixels
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)


def rows_by_split(items: Iterable[Item], where: str, check_counts: bool = True) -> dict[str, list[tuple[int, bytes]]]:
    """(label, JPEG bytes) per split, in the loader's fixed order (class, then file name), counts checked."""
    buckets: dict[str, list[tuple[str, int, bytes]]] = {"train": [], "test": []}
    for split, cls, fname, blob in items:
        if split in buckets and cls in CIFAR_CLASSES:
            buckets[split].append((f"{cls}/{fname}", CIFAR_CLASSES.index(cls), blob))
    out = {}
    for split, expected in SPLITS:
        rows = sorted(buckets[split])  # deterministic order whatever the tar's
        if check_counts and len(rows) != expected:
            raise DataError(f"{where}: {split} has {len(rows)} images, expected {expected}; the archive is incomplete")
        out[split] = [(y, b) for _, y, b in rows]
    return out


def decode_rows(rows: dict[str, list[tuple[int, bytes]]], where: str) -> Raw:
    """Decode :func:`rows_by_split`'s output to uint8 pixels and int64 labels."""
    out = []
    for split, _ in SPLITS:
        x = decode_jpegs([b for _, b in rows[split]], f"{where} ({split})")  # (N, 3, 32, 32) uint8
        if x.shape[1:] != (3, 32, 32):
            raise DataError(f"{where}: {split} images are {tuple(x.shape[1:])}, expected (3, 32, 32)")
        out += [x, torch.tensor([y for y, _ in rows[split]], dtype=torch.long)]
    return out[0], out[1], out[2], out[3]


def decode_tree(items: Iterable[Item], where: str) -> Raw:
    """Pixels and labels of the 50,000 + 10,000 JPEGs in ``items``."""
    return decode_rows(rows_by_split(items, where), where)
