"""LRP speed: each registered composite against the model's bare forward+backward and against Zennit.

Run as ``flock /tmp/deepscope-bench.lock python benchmarks/relevance.py`` (one benchmark at a time on a shared
machine). For each model (random init, eval mode) and a batch of 8 photos at 224x224, it times:

- bare: one forward and one backward to the input (``torch.autograd.grad`` of the top-1 logits), the floor;
- ours: ``ds.attribute(model, x, name)``;
- Zennit: the composite of the same name with the model's canonizer (``ResNetCanonizer`` / ``VGGCanonizer``),
  through ``zennit.attribution.Gradient`` with the one-hot output times the output as the initial relevance.

Each timing is the median of ``--repeats`` runs after one warm-up, with ours and Zennit interleaved so that
machine noise hits both alike. Ratios (ours / bare, ours / Zennit) come from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from zennit.attribution import Gradient
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

import deepscope as ds
from deepscope.attribution.relevance import input_bounds
from deepscope.attribution.relevance.peers import zennit_composite

IMAGENET = ds.Preprocessing(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=(224, 224)
)


def photos(vm: ds.VisionModel, batch: int) -> torch.Tensor:
    images = list(ds.samples().values())
    x = vm.preprocess(images)
    while x.shape[0] < batch:  # more samples: mirrored copies of the photos
        x = torch.cat([x, x.flip(3)])
    return x[:batch].contiguous()


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg16")
    parser.add_argument("--methods", default=",".join(info.name for info in ds.methods("relevance")))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}, batch {args.batch} at 224x224, median of {args.repeats}")
    print(
        f"{'model':10s} {'method':30s} {'ours s':>8s} {'zennit s':>9s} {'bare s':>7s} "
        f"{'ours/bare':>10s} {'ours/zennit':>12s}"
    )
    for model_name in args.models.split(","):
        bench_model(model_name, args.methods.split(","), args.batch, args.repeats, device)


def bench_model(model_name: str, methods: list[str], batch: int, repeats: int, device: torch.device) -> None:
    module = torchvision.models.get_model(model_name, weights=None).eval().to(device)
    vm = ds.as_vision_model(module, preprocessing=IMAGENET)
    canonizer = ResNetCanonizer if model_name.startswith("resnet") else VGGCanonizer
    x = photos(vm, batch)
    with torch.no_grad():
        target = module(x).argmax(1)
    low, high = input_bounds(vm, x)

    def bare() -> None:
        leaf = x.detach().requires_grad_()
        torch.autograd.grad(module(leaf).gather(1, target[:, None]).sum(), leaf)

    for name in methods:

        def ours(name: str = name) -> torch.Tensor:
            return ds.attribute(vm, x, name, target=target)

        def zennit(name: str = name) -> torch.Tensor:
            composite = zennit_composite(name, [canonizer()], low, high)
            with Gradient(module, composite) as attributor:
                return attributor(x, lambda out: torch.nn.functional.one_hot(target, out.shape[1]) * out)[1]

        bare()
        ours()
        zennit()
        t_ours, t_zennit, t_bare = [], [], []
        for _ in range(repeats):  # interleaved, so that load changes hit all three alike
            t_bare.append(median_time(bare, 1, device))
            t_ours.append(median_time(ours, 1, device))
            t_zennit.append(median_time(zennit, 1, device))
        mine, theirs, floor = (statistics.median(t) for t in (t_ours, t_zennit, t_bare))
        print(
            f"{model_name:10s} {name:30s} {mine:8.3f} {theirs:9.3f} {floor:7.3f} {mine / floor:9.2f}x "
            f"{mine / theirs:11.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
