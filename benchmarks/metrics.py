"""deepscope.metrics against Quantus 0.6.0, same inputs, maps and settings, in one run.

64 LeNet/MNIST test digits and 8 EfficientNet-Lite0 photos (the 5 bundled photos and 3 of them mirrored).
For each metric: our time, Quantus's time, their ratio (Quantus / ours: > 1 means we are faster), and our time
over one bare forward + backward of the model on the batch, so that machine noise cancels as far as possible.
Both sides use the same explanation function (a plain autograd gradient) where a metric recomputes maps, the
same perturbations where a metric is random, and each library's default batch size (see `cases`); each result
is checked against the other ("agreement": the largest |ours - theirs| / (|theirs| + 1e-3)).

    flock /tmp/deepscope-bench.lock python benchmarks/metrics.py [--repeats 2] [--only lenet|efficientnet]
        [--device cuda] [--threads N] [--metrics a,b] [--batch-size 64]

benchmarks/metrics_device.sh runs it on a lent GPU machine (its GPU and its 16 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

import deepscope as ds

warnings.filterwarnings("ignore")


def gradient(model, inputs, target):
    inputs = inputs.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    return grad


def quantus_gradient(model, inputs, targets, **kwargs):
    device = next(model.parameters()).device
    classes = ds.targets.Classes(torch.as_tensor(targets, dtype=torch.long))
    return gradient(model, torch.as_tensor(inputs).to(device), classes).cpu().numpy()


def best_time(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best time of at least ``repeats`` runs, and of as many more as fit in one second (at most 50): a run of
    a few milliseconds is easily slowed by a time slice on this shared machine, so short ones get more tries."""
    best, result, runs, spent = float("inf"), None, 0, 0.0
    while runs < repeats or (spent < 1.0 and runs < 50):
        start = time.perf_counter()
        result = function()
        if isinstance(result, torch.Tensor):
            result = result.cpu()  # waits for the device
        elapsed = time.perf_counter() - start
        best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
    return best, result


def bare_pass(vm, x) -> float:
    """One forward + backward of the model on the batch (input gradient), the unit of cost."""

    def once():
        inputs = x.clone().requires_grad_()
        vm(inputs).max(1).values.sum().backward()
        synchronize(x.device)

    once()
    return best_time(once, 3)[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BATCH_SIZE = 64


def cases(name: str, vm, x, y, maps):
    """(metric, ours, quantus, compare) for one model; every setting is the same on both sides."""
    import quantus

    target = ds.targets.Classes(y)
    # Both libraries at their default batch_size (64). Quantus's counts samples and perturbs them step after
    # step, so it sends min(64, samples) inputs per forward; ours counts perturbed inputs, which it builds for
    # all steps at once, so it sends 64 (on the CPU at most 8 images of 224 x 224, which run faster per image
    # than 64 do). --batch-size sets ours.
    bs = BATCH_SIZE
    xs, ys, maps_np = x.cpu().numpy(), y.cpu().numpy(), maps.cpu().numpy()
    pixel_maps = maps.sum(1, keepdim=True)
    pixel_maps_np = pixel_maps.cpu().numpy()
    height = x.shape[-1]
    common = {"channel_first": True, "device": str(x.device)}
    step = height * height // (8 if name == "lenet" else 16)
    patch = 4 if name == "lenet" else 28
    regions = (height // patch) ** 2 // (1 if name == "lenet" else 2)
    infidelity_patch = 4 if name == "lenet" else 56
    cells = torch.arange(height) // infidelity_patch
    cell_of_pixel = (cells[:, None] * (height // infidelity_patch) + cells[None, :]).to(x.device)
    sweep = torch.stack(
        [(cell_of_pixel <= k).float()[None, None] * x for k in range(int(cell_of_pixel.max()) + 1)]
    )
    samples = 10 if name == "lenet" else 4
    rng = np.random.default_rng(0)
    noise = np.stack([rng.uniform(-0.2, 0.2, (x.shape[0], x[0].numel())) for _ in range(samples)])
    noise_t = torch.as_tensor(noise, dtype=torch.float32).view(samples, *x.shape).to(x.device)
    classes = 10 if name == "lenet" else 1000
    np.random.seed(42)  # replay Quantus's RandomLogit draw of the other classes (seed 42, one batch)
    draw = np.random.randint(0, classes - 1, len(ys))
    off = [int(np.delete(np.arange(classes), label)[pick]) for label, pick in zip(ys, draw, strict=True)]
    masks = (
        torch.rand(x.shape[0], 1, height, height, generator=torch.Generator().manual_seed(0)) > 0.7
    ).float()
    masks_np = masks.numpy()
    masks = masks.to(x.device)

    def quantus_max_sensitivity():
        np.random.seed(0)  # replay the same noise through numpy's global generator
        replay = iter(noise)

        def perturb(arr, indices, **kwargs):
            return (arr + next(replay)).astype(arr.dtype)

        metric = quantus.MaxSensitivity(nr_samples=samples, perturb_func=perturb, normalise=False, abs=False)
        return metric(vm.module, xs, ys, maps_np, explain_func=quantus_gradient, **common)

    def quantus_random_logit():
        metric = quantus.RandomLogit(
            num_classes=classes,
            seed=42,
            similarity_func=quantus.similarity_func.correlation_spearman,
            normalise=False,
            abs=False,
        )
        return metric(vm.module, xs, ys, maps_np, explain_func=quantus_gradient, **common)

    return [
        (
            "pixel_flipping",
            lambda: ds.metrics.pixel_flipping(
                vm, x, maps, target, per_step=step, replacement=0.0, batch_size=bs
            ).curve[:, 1:],
            lambda: quantus.PixelFlipping(
                features_in_step=step, perturb_baseline=0.0, normalise=False, abs=False
            )(vm.module, xs, ys, maps_np, softmax=False, **common),
        ),
        (
            "region_perturbation",
            lambda: ds.metrics.region_perturbation(
                vm, x, maps, target, region_size=patch, steps=regions, replacement=0.0, batch_size=bs
            ).drop[:, 1:],
            lambda: quantus.RegionPerturbation(
                patch_size=patch, regions_evaluation=regions, perturb_baseline=0.0, normalise=False, abs=False
            )(vm.module, xs, ys, maps_np, softmax=False, **common),
        ),
        (
            "randomization (MPRT)",
            lambda: torch.stack(
                list(
                    ds.metrics.randomization(
                        vm, x, maps, target, method=gradient, similarity="spearman", seed=43, batch_size=bs
                    )
                    .similarity["spearman"]
                    .T
                )
            ),
            lambda: list(
                quantus.MPRT(seed=42, abs=True, normalise=False)(
                    vm.module, xs, ys, maps_np, explain_func=quantus_gradient, softmax=False, **common
                ).values()
            )[1:],
        ),
        (
            "random_logit",
            lambda: ds.metrics.random_logit(
                vm,
                x,
                maps,
                target,
                method=gradient,
                off_target=off,
                similarity="spearman",
                normalize=False,
                batch_size=bs,
            ),
            quantus_random_logit,
        ),
        (
            "pointing_game",
            # per-pixel maps: for color maps Quantus compares [B,C*H*W] maxima with [B,H*W] masks and fails
            lambda: ds.metrics.pointing_game(vm, x, pixel_maps, target, masks=masks, tolerance=0),
            lambda: np.asarray(
                quantus.PointingGame(normalise=False, abs=False)(
                    None, xs, ys, pixel_maps_np, masks_np, **common
                ),
                dtype=float,
            ),
        ),
        (
            "infidelity",
            lambda: ds.metrics.infidelity(
                vm, x, maps, target, perturbation=sweep, normalize=False, batch_size=bs
            ),
            lambda: quantus.Infidelity(
                perturb_patch_sizes=[infidelity_patch],
                n_perturb_samples=1,
                perturb_baseline=0.0,
                normalise=False,
                abs=False,
            )(vm.module, xs, ys, maps_np, softmax=False, **common),
        ),
        (
            "max_sensitivity",
            lambda: ds.metrics.max_sensitivity(
                vm, x, maps, target, method=gradient, perturbations=noise_t, batch_size=bs
            ),
            quantus_max_sensitivity,
        ),
    ]


def run(name: str, vm, x, repeats: int, only: set[str] | None = None) -> list[list[str]]:
    with torch.no_grad():
        y = vm(x).argmax(1).cpu()
    # gradient x input, with a tiny jitter so that no two values tie (tied values may be ordered differently
    # by numpy's quicksort and our stable sort, and the benchmark checks the results agree)
    jitter = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device) * 1e-7
    maps = gradient(vm, x, ds.targets.Classes(y)) * x + jitter
    unit = bare_pass(vm, x)
    rows = []
    for metric, ours, theirs in cases(name, vm, x, y, maps):
        if only and metric.split()[0] not in only:
            continue
        ours_time, ours_result = best_time(ours, repeats)
        theirs_time, theirs_result = best_time(theirs, repeats)
        ours_np = np.asarray(torch.as_tensor(ours_result, dtype=torch.float64).cpu())
        theirs_np = np.asarray(theirs_result, dtype=np.float64).reshape(ours_np.shape)
        error = np.max(np.abs(ours_np - theirs_np) / (np.abs(theirs_np) + 1e-3))
        agreement = f"max rel diff {error:.1e}"
        rows.append(
            [
                f"{name} ({x.shape[0]})",
                metric,
                f"{ours_time:.3f}",
                f"{theirs_time:.3f}",
                f"{theirs_time / ours_time:.2f}x",
                "yes" if theirs_time / ours_time >= 2 else "MISSED",
                f"{ours_time / unit:.1f}",
                agreement,
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["lenet", "efficientnet"], default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", default=None, help="comma-separated subset of the metrics")
    parser.add_argument("--batch-size", type=int, default=64, help="ours (Quantus stays at its default)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    only = set(args.metrics.split(",")) if args.metrics else None
    global BATCH_SIZE
    BATCH_SIZE = args.batch_size
    # The load average says how busy the machine was: with more runnable threads than cores, every
    # multi-threaded torch op (both libraries' forwards, our tensor bookkeeping) can stall for a time slice.
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    torch.manual_seed(0)
    header = [
        "model (samples)",
        "metric",
        "ours s",
        "Quantus s",
        "Quantus/ours",
        ">= 2x",
        "ours/(fwd+bwd)",
        "agreement",
    ]
    print(" | ".join(header))
    rows = []
    if args.only in (None, "lenet"):
        lenet = ds.load_model("zoo:lenet_mnist")
        lenet.module.to(device)
        x = lenet.preprocess(ds.datasets.mnist5k("test").images[:64])
        rows += run("lenet", lenet, x, args.repeats, only)
    if args.only in (None, "efficientnet"):
        net = ds.load_model("zoo:efficientnet_lite0")
        net.module.to(device)
        photos = list(ds.samples().values())
        from PIL import ImageOps

        x = net.preprocess(photos + [ImageOps.mirror(p) for p in photos[:3]])
        rows += run("efficientnet_lite0", net, x, args.repeats, only)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
