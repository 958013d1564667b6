"""The compact CIFAR-10-JPEG form: byte-exact JPEGs, exact pixels, damage detected, read where the mirror is absent."""
import io

import numpy as np
import pytest
import torch

from bnstudy.data import compact, decode_jpegs
from bnstudy.data.jpeg import CIFAR_CLASSES, decode_rows, iter_folder, iter_tar, rows_by_split
from bnstudy.errors import DataError

def _jpeg_folder(root, per_class: int = 2, quality: int = 75):
    """A small CIFAR-10-JPEG-like folder of random 32x32 JPEGs; Pillow gives them one shared header."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CIFAR_CLASSES[:3]:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=quality)
                (d / f"{i:04d}.jpg").write_bytes(buf.getvalue())
    return root


def test_compact_round_trip_is_byte_exact(tmp_path):
    src = _jpeg_folder(tmp_path / "jpeg")
    rows = rows_by_split(iter_folder(src), "src", check_counts=False)
    sizes = compact.build(rows, tmp_path / "c.npz")
    assert sizes["images"] == 12 and sizes["header_bytes"] == compact.header_length(rows["train"][0][1])
    back = compact.read_rows(tmp_path / "c.npz")
    assert back == rows  # every JPEG rebuilt byte for byte, labels and order kept
    got = compact.read(tmp_path / "c.npz")
    want = decode_rows(rows, "src")
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(got[0], decode_jpegs([b for _, b in rows["train"]], "x"))


def test_compact_refuses_damage_and_mixed_headers(tmp_path):
    src = _jpeg_folder(tmp_path / "jpeg")
    rows = rows_by_split(iter_folder(src), "src", check_counts=False)
    path = tmp_path / "c.npz"
    compact.build(rows, path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside the stored arrays
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt or truncated"):
        compact.read(path)
    path.write_bytes(bytes(blob[: len(blob) // 3]))
    with pytest.raises(DataError, match="corrupt or truncated"):
        compact.read(path)
    other = _jpeg_folder(tmp_path / "q90", quality=90)  # other quantization tables: another header
    rows["test"][0] = rows_by_split(iter_folder(other), "q90", check_counts=False)["test"][0]
    with pytest.raises(DataError, match="does not share"):
        compact.build(rows, tmp_path / "mixed.npz")


def test_loader_reads_compact_when_no_mirror(tmp_data, tmp_path, monkeypatch):
    from bnstudy.data import _load_cifar10_jpeg

    src = _jpeg_folder(tmp_path / "jpeg")
    rows = rows_by_split(iter_folder(src), "src", check_counts=False)
    compact.build(rows, compact.default_path())
    assert compact.default_path() == tmp_data / "compact" / "cifar10_jpeg.npz"
    monkeypatch.delenv("BNSTUDY_DATA_MIRROR", raising=False)
    got = _load_cifar10_jpeg()
    assert all(torch.equal(a, b) for a, b in zip(got, decode_rows(rows, "src")))


def test_build_command_errors_in_one_line(tmp_data, tmp_path, capsys):
    assert compact.main(["build", str(tmp_path / "o.npz"), "--source", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--source" in err
    assert not (tmp_path / "o.npz").exists()


def _mirror_tar():
    from bnstudy.data import mirror_dir

    m = mirror_dir()
    tar = m / "cifar10-jpeg" / "cifar10-jpeg.tar" if m else None
    if tar is None or not tar.exists():
        pytest.skip("no CIFAR-10-JPEG mirror on this machine (BNSTUDY_DATA_MIRROR)")
    return tar


@pytest.mark.slow
def test_compact_of_the_mirror_holds_every_jpeg_byte_for_byte(tmp_data, monkeypatch):
    """The full set: every JPEG byte for byte, in the tar's order, and the mirror-less loader reads this file.

    Its pixels are then the tar's: both paths hand the same rows to ``decode_rows`` (``compact.read`` and
    ``decode_tree``), and tests/test_data.py hashes the tar's decode, so a second full decode here would add nothing.
    """
    tar = _mirror_tar()
    rows = rows_by_split(iter_tar(tar), str(tar))
    assert compact.main(["build"]) == 0
    path = compact.default_path()
    assert path.stat().st_size < 19 * 2**20  # 17.0 MiB of scans, the header once, offsets and labels
    assert compact.read_rows(path) == rows
    monkeypatch.delenv("BNSTUDY_DATA_MIRROR")  # the loader now has only the compact form
    asked = []
    monkeypatch.setattr(compact, "read", lambda p: asked.append(p) or ())
    from bnstudy.data import _load_cifar10_jpeg

    _load_cifar10_jpeg()
    assert asked == [path]
