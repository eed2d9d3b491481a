"""Training throughput: is the data pipeline fast enough to keep the model busy?

Prints, for the default resunet at a 128^3 patch and batch 2: model iterations/s and patches/s
(forward + backward + AdamW step on random input), data-loader patches/s on its own (the real
training sampler and augmentation on cached phantoms), their ratio, and peak memory.
Run: .venv/bin/python benchmarks/train.py [--augment light|nnunet] [--steps 4]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from monai.transforms import ClassesToIndicesd

from medseg.data.network_input import NetworkInput
from medseg.data.phantoms import make_phantom
from medseg.data.transforms import training_sample_transforms
from medseg.nets.registry import build_network
from medseg.runtime import tune_allocator

PATCH, BATCH, CLASSES = (128, 128, 128), 2, 10


def model_rate(steps: int) -> float:
    """Seconds per training step of the default U-Net on random data (after one warm-up)."""
    model = build_network("resunet", 1, CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    image = torch.randn(BATCH, 1, *PATCH)
    label = torch.randint(0, CLASSES, (BATCH, 1, *PATCH))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn(model(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def loader_rate(patches: int, augment: str) -> float:
    """Seconds per patch of medseg's sampler + augmentation on cached 2 mm phantoms."""
    items = []
    for seed in range(4):
        p = make_phantom(seed, spacing=(2.0, 2.0, 2.0), orientation="RAS")
        item = {"image": MetaTensor(p.image[None].astype(np.float32)),
                "label": MetaTensor(p.label[None])}
        items.append(ClassesToIndicesd("label", num_classes=CLASSES)(item))
    intensity = {"clip": [-1000.0, 500.0], "mean": 50.0, "std": 200.0}
    sample = training_sample_transforms(NetworkInput((2.0, 2.0, 2.0), intensity, PATCH), CLASSES,
                                        augment=augment)
    sample.set_random_state(seed=0)
    sample(items[0])  # warm-up
    start = time.perf_counter()
    for i in range(patches):
        sample(items[i % len(items)])
    return (time.perf_counter() - start) / patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--augment", default="light", choices=["light", "nnunet"])
    args = parser.parse_args()
    tune_allocator()
    step = model_rate(args.steps)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    per_patch = loader_rate(args.patches, args.augment)
    model_patches = BATCH / step
    loader_patches = 1 / per_patch
    print(f"resunet, patch {PATCH}, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"augment {args.augment}")
    print("| measure | value |\n|---|---|")
    print(f"| model iterations/s | {1 / step:.3f} |")
    print(f"| model patches/s (consumption) | {model_patches:.2f} |")
    print(f"| data loader patches/s, one process | {loader_patches:.2f} |")
    print(f"| loader / model rate | {loader_patches / model_patches:.1f}x |")
    print(f"| peak RSS during model steps | {peak_gb:.2f} GB |")


if __name__ == "__main__":
    main()
