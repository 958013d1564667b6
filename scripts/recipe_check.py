"""An independent check of the resnet_full recipe: bnstudy's data path and training loop against plain torch.

    python scripts/recipe_check.py data                        # the JPEGs decoded here against bnstudy's arrays
    python scripts/recipe_check.py train --epochs 10 --seed 0  # the recipe in ~60 lines of plain torch

``data`` decodes every JPEG of the CIFAR-10-JPEG tar with Pillow, without
bnstudy, and compares pixels and labels with what ``bnstudy.data.load_raw``
returns (as multisets, so order does not matter); it also counts test images
whose pixels occur in the training set. ``train`` trains ResNet-20 at full
width with its own model, augmentation and loop, written here without
bnstudy's code (nn.BatchNorm2d on purpose: this is the reference, not an
architecture of the package), on the full training set with the recipe of
``experiments/resnet_full.yaml`` (He init, SGD momentum 0.9, weight decay 5e-4
on every parameter, cosine to 0, batch 128, crop and flip, bf16 autocast +
channels_last) at ``--lr`` (default 0.2, ``bn``'s rate), and reports the final
test accuracy: bnstudy's ``bn`` runs at the same epochs should land within seed
noise of it. Only the pixels come through bnstudy (``data`` checks them).
Each command prints one JSON line and, with ``--out FILE``, writes it there.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bnstudy.config import DataConfig  # noqa: E402
from bnstudy.data import load_raw  # noqa: E402
from bnstudy.data.paths import mirror_dir  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def check_data() -> dict:
    import numpy as np
    from PIL import Image

    if mirror_dir() is None or not (mirror_dir() / "cifar10-jpeg" / "cifar10-jpeg.tar").exists():
        sys.exit("recipe_check: set BNSTUDY_DATA_MIRROR to the folder holding cifar10-jpeg/cifar10-jpeg.tar")
    tar = mirror_dir() / "cifar10-jpeg" / "cifar10-jpeg.tar"
    ref: dict[str, collections.Counter] = {"train": collections.Counter(), "test": collections.Counter()}
    with tarfile.open(tar) as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".jpg"):
                split, cls = Path(m.name).parts[-3:-1]
                pixels = np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))  # (H, W, C)
                ref[split][(hashlib.sha1(pixels.tobytes()).hexdigest(), CLASSES.index(cls))] += 1
    tx, ty, vx, vy = load_raw(DataConfig(name="cifar10_jpeg"))
    out: dict = {"check": "data"}
    for split, x, y in (("train", tx, ty), ("test", vx, vy)):
        ours = collections.Counter(
            (hashlib.sha1(x[i].permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest(), int(y[i])) for i in range(len(y))
        )
        out[f"{split}_images"] = len(y)
        out[f"{split}_identical"] = ours == ref[split]
        out[f"{split}_class_counts"] = torch.bincount(y, minlength=10).tolist()
    out["test_in_train"] = len({h for h, _ in ref["train"]} & {h for h, _ in ref["test"]})
    out["train_channel_mean"] = [round(v, 4) for v in (tx.float() / 255).mean(dim=(0, 2, 3)).tolist()]
    return out


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.c2, self.b2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.skip(x))


def resnet20(width: int = 16) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c = width
    for stage in range(3):
        for i in range(3):
            c_out = width * 2**stage
            layers.append(Block(c, c_out, 2 if stage and i == 0 else 1))
            c = c_out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # He init, fan-in
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def train(epochs: int, seed: int, lr: float, batch: int = 128) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tx, ty, vx, vy = load_raw(DataConfig(name="cifar10_jpeg"))
    tx, vx = tx.float() / 255, vx.float() / 255
    mean, std = tx.mean(dim=(0, 2, 3), keepdim=True), tx.std(dim=(0, 2, 3), keepdim=True)
    tx, vx = (tx - mean) / std, (vx - mean) / std
    net = resnet20().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = len(ty) // batch  # the last partial batch is dropped, as in bnstudy (390 steps per epoch)
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    start, step, loss = time.time(), 0, torch.tensor(math.nan)
    for _ in range(epochs):
        order = torch.randperm(len(ty))
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = F.pad(tx[idx], (4, 4, 4, 4))  # (B, 3, 40, 40); zero = the mean pixel after normalising
            crops = torch.stack([x[j, :, a : a + 32, b : b + 32] for j, (a, b) in enumerate(torch.randint(0, 9, (len(idx), 2)).tolist())])
            flip = torch.rand(len(idx)) < 0.5
            crops[flip] = crops[flip].flip(3)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(crops.contiguous(memory_format=torch.channels_last)), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    net.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(vy), 1000):
            correct += int((net(vx[i : i + 1000].contiguous(memory_format=torch.channels_last)).argmax(1) == vy[i : i + 1000]).sum())
    return {"check": "train", "epochs": epochs, "steps": step, "seed": seed, "lr": lr, "final_loss": round(float(loss.detach()), 4),
            "test_acc": correct / len(vy), "seconds": round(time.time() - start, 1)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["data", "train"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    result = check_data() if a.what == "data" else train(a.epochs, a.seed, a.lr)
    line = json.dumps(result)
    print(line)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
