"""CIFAR-10-JPEG in 17 MiB: the JPEG header every image shares, stored once, plus each image's scan bytes.

All 60,000 JPEGs of the CIFAR-10-JPEG archive start with the same 623 bytes
(JFIF marker, quantization and Huffman tables, frame and scan headers); only the
entropy-coded scan after them differs. Stored as one uncompressed ``.npz``:

- ``header``  uint8, the shared bytes up to and including the start-of-scan segment;
- ``scans``   uint8, every image's bytes after the header (scan data and end marker), concatenated;
- ``offsets`` int64 (N + 1,), image ``i`` is ``header + scans[offsets[i]:offsets[i+1]]``;
- ``labels``  uint8 (N,), class indices; ``n_train`` the number of training images (they come first);
- ``version`` the format version.

Images are in the loader's order (split, class, file name), so header + scan is
each original file byte for byte and decodes to exactly the pixels of the
archive. The zip container's CRC-32 of every array is checked on reading, so a
damaged file is an error, never other pixels.

    python -m bnstudy.data.compact build [OUT] [--source MIRROR_TAR_OR_FOLDER]
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from bnstudy.data.jpeg import SPLITS, Raw, decode_rows, iter_folder, iter_tar, rows_by_split
from bnstudy.data.paths import data_dir, mirror_dir
from bnstudy.errors import DataError

VERSION = 1
FILE_NAME = "cifar10_jpeg.npz"
SOS = 0xDA  # start of scan: the last header segment


def default_path() -> Path:
    """Where the loader looks for the compact form: ``compact/cifar10_jpeg.npz`` in the prepared data folder."""
    return data_dir() / "compact" / FILE_NAME


def header_length(blob: bytes) -> int:
    """Bytes of a JPEG up to and including its start-of-scan segment (the part CIFAR-10-JPEG images share)."""
    if blob[:2] != b"\xff\xd8":
        raise DataError("not a JPEG (no start-of-image marker)")
    i = 2
    while i + 4 <= len(blob):
        if blob[i] != 0xFF:
            raise DataError(f"not a JPEG (no marker at byte {i})")
        marker, length = blob[i + 1], int.from_bytes(blob[i + 2 : i + 4], "big")
        i += 2 + length
        if marker == SOS:
            return i
    raise DataError("not a JPEG (no start-of-scan segment)")


def build(rows: dict[str, list[tuple[int, bytes]]], out: Path) -> dict[str, int]:
    """Write the compact form of ``rows`` (from :func:`rows_by_split`) to ``out`` atomically; return its sizes."""
    blobs = [b for split, _ in SPLITS for _, b in rows[split]]
    if not blobs:
        raise DataError("no images to store")
    n_head = header_length(blobs[0])
    header = blobs[0][:n_head]
    for i, b in enumerate(blobs):
        if b[:n_head] != header:
            raise DataError(f"image {i} does not share the first image's {n_head}-byte JPEG header; the compact form needs one shared header")
    lengths = np.fromiter((len(b) - n_head for b in blobs), dtype=np.int64, count=len(blobs))
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    scans = np.frombuffer(b"".join(b[n_head:] for b in blobs), dtype=np.uint8)
    labels = np.array([y for split, _ in SPLITS for y, _ in rows[split]], dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temp name
        np.savez(
            f,
            header=np.frombuffer(header, dtype=np.uint8),
            scans=scans,
            offsets=offsets,
            labels=labels,
            n_train=np.int64(len(rows["train"])),
            version=np.int64(VERSION),
        )
    os.replace(tmp, out)
    return {"images": len(blobs), "header_bytes": n_head, "scan_bytes": int(offsets[-1]), "file_bytes": out.stat().st_size}


def read_rows(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """The (label, JPEG bytes) rows stored in ``path``, each JPEG rebuilt byte for byte."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                raise DataError(f"{path} is compact format version {int(z['version'])}, this bnstudy reads {VERSION}; rebuild it")
            header, scans, offsets = z["header"].tobytes(), z["scans"], z["offsets"]
            labels, n_train = z["labels"], int(z["n_train"])
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}); rebuild it (python -m bnstudy.data.compact build)") from None
    n = len(labels)
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != len(scans) or np.any(np.diff(offsets) <= 0) or not 0 <= n_train <= n:
        raise DataError(f"{path} has inconsistent offsets or counts; rebuild it (python -m bnstudy.data.compact build)")
    data = scans.tobytes()
    blobs = [header + data[offsets[i] : offsets[i + 1]] for i in range(n)]
    ys = labels.tolist()
    return {"train": list(zip(ys[:n_train], blobs[:n_train])), "test": list(zip(ys[n_train:], blobs[n_train:]))}


def read(path: Path) -> Raw:
    """uint8 pixels and labels decoded from the compact file ``path``."""
    return decode_rows(read_rows(path), str(path))


def _source(arg: str | None) -> tuple[Path, str]:
    """The archive to build from: ``--source``, else the mirror's ``cifar10-jpeg/cifar10-jpeg.tar``."""
    if arg:
        return Path(arg), arg
    mirror = mirror_dir()
    if mirror is None:
        raise DataError("no source: set BNSTUDY_DATA_MIRROR to the dataset mirror or give --source PATH (a tar or a train/ test/ folder)")
    return mirror / "cifar10-jpeg" / "cifar10-jpeg.tar", str(mirror / "cifar10-jpeg" / "cifar10-jpeg.tar")


def main(argv: list[str] | None = None) -> int:
    """``python -m bnstudy.data.compact build [OUT] [--source PATH]``: build the compact form from the archive."""
    p = argparse.ArgumentParser(prog="python -m bnstudy.data.compact", description="Build the compact, exact CIFAR-10-JPEG file.")
    p.add_argument("command", choices=["build"])
    p.add_argument("out", nargs="?", help=f"output file (default: compact/{FILE_NAME} in BNSTUDY_DATA_DIR)")
    p.add_argument("--source", help="CIFAR-10-JPEG tar or folder (default: the mirror's cifar10-jpeg/cifar10-jpeg.tar)")
    args = p.parse_args(argv)
    try:
        src, where = _source(args.source)
        if src.is_dir():
            items = iter_folder(src)
        elif src.is_file():
            items = iter_tar(src)
        else:
            raise DataError(f"{where} not found; give --source PATH (a CIFAR-10-JPEG tar or a folder with train/ and test/)")
        out = Path(args.out) if args.out else default_path()
        sizes = build(rows_by_split(items, where), out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mib = sizes["file_bytes"] / 2**20
    print(f"{out}: {sizes['images']} images, {sizes['header_bytes']}-byte shared header, {sizes['scan_bytes']} scan bytes, {mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
