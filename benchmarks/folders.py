"""Decoding throughput of image folders, and the cost of the DARTS augmentation per step.

Writes ``--images`` PNGs and as many JPEGs (``--size`` x ``--size`` RGB, 10 classes, a smooth pattern
plus noise so the files compress like photos do) into a temporary folder, then times
:func:`darts_core.data.folder.read_image_folder` on each (with 1 thread and with the default pool), and
:class:`darts_core.data.augment.RandomCropFlip` on one normalised batch (what a search or training
step adds). Prints one JSON object.

    .venv/bin/python benchmarks/folders.py                     # 10,000 PNGs + 10,000 JPEGs, 32 x 32
    .venv/bin/python benchmarks/folders.py --images 500        # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from darts_core.data.augment import RandomCropFlip, epoch_generator
from darts_core.data.folder import read_image_folder


def write_folder(root: Path, count: int, size: int, suffix: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size)
    for index in range(count):
        label = index % 10
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pattern = np.sin(2 * np.pi * (label + 1) * grid)[:, None] * np.cos(np.pi * grid)[None, :]
        pixels = 127 + 80 * pattern[..., None] + rng.normal(0, 20, size=(size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        options = {"quality": 90} if suffix == ".jpg" else {}
        image.save(folder / f"{index:05d}{suffix}", **options)


def time_read(root: Path, workers: int | None, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        folder = read_image_folder(root, workers=workers)
        best = min(best, time.perf_counter() - started)
    return folder.num_samples / best


def time_augment(batch: int, size: int, repeats: int) -> dict[str, float]:
    """Milliseconds of one batch's random crop and flip (normalised float32, channels-last, CPU)."""
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    crop = RandomCropFlip(padding=max(1, round(4 * size / 32)), horizontal_flip=True)
    generator = epoch_generator(0, 1, 2)
    crop(images, generator)
    started = time.perf_counter()
    for _ in range(repeats):
        crop(images, generator)
    augment_ms = (time.perf_counter() - started) / repeats * 1e3

    return {"augment_ms_per_batch": augment_ms}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--images", type=int, default=10_000, help="images per format")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="batch of the augmentation timing")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    result: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "pillow": Image.__version__,
        "images": args.images,
        "size": args.size,
    }
    with tempfile.TemporaryDirectory() as directory:
        for suffix in (".png", ".jpg"):
            root = Path(directory) / suffix.strip(".")
            write_folder(root, args.images, args.size, suffix)
            result[f"{suffix.strip('.')}_images_per_s_1_thread"] = round(time_read(root, 1, args.repeats))
            result[f"{suffix.strip('.')}_images_per_s_pool"] = round(time_read(root, None, args.repeats))
    result.update({k: round(v, 4) for k, v in time_augment(args.batch, args.size, 200).items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
