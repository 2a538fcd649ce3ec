"""Speed of deepscope.units, as ratios measured in one run (so that machine noise cancels as far as it can).

1. Feature visualization: iterations per second of ``ds.units.visualize`` against torch-lucent's ``render_vis``
   on the same model (EfficientNet-Lite0), image size, parameterization (Fourier, decorrelated color, sigmoid),
   transformations (pad 12, jitter 8, scale 0.9-1.1, rotate -10..10, jitter 4) and optimizer (Adam, lr 0.05),
   for a mid-network channel and for a class logit (where stopping the forward pass early cannot help).
   Target: >= 1.0x.
2. ``top_patches`` throughput over a dataset against the model's bare forward pass over the same batches
   (eval mode, ``torch.inference_mode``). Target: >= 0.85x. The pass runs ``VisionModel.forward_only`` (the
   folded channels-last copy with its layers tapped), the bare loop the model as it is.

3. Visual concepts (``ds.units.concepts``, one pass moving the centers, one assigning) against the bare forward
   pass over the same batches plus scikit-learn's ``MiniBatchKMeans`` on the same unit-normalized vectors (one pass
   of mini-batches of the same size, the same k, then its labels of every vector), on 5,000 digits at LeNet-5's
   conv2 and on 256 photos at an EfficientNet-Lite0 block. The baseline gathers every vector in memory, which
   ``concepts`` never does; its gathering is not timed. Target: >= 0.8x.
4. Decoder inversion (``ds.units.train_inverter``): the training time on LeNet-5's conv1, and at inference the
   model forwards per inverted batch (one), the time per image against the bare forward to conv1 and against the
   optimization-based ``ds.units.invert``.

Run: ``flock /tmp/deepscope-bench.lock python benchmarks/units.py [--device cuda] [--threads N]
[--only featurevis|top_patches|concepts|inverter]``. Smallest settings: ``--samples 16 --digits 500 --repeats 1
--inverter-epochs 1``.

lucent 0.1.8 runs unchanged with torch 2.14 and kornia 0.4.1 (on a machine without IPython, see
``import_lucent``). It picks its
device at import (cuda when available), so the model is moved there before it runs. Its ``hook_model`` leaves a
hook on every module after each call, so each lucent run gets a fresh copy of the model (made outside the timing).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types

import torch

import deepscope as ds
from deepscope.units import transforms as T


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def import_lucent():
    """lucent's ``param`` and ``render``. Where IPython is not installed (a bare GPU machine), a stub
    ``IPython.display`` module is registered first: lucent imports it at import time for notebook display
    only, which ``render_vis(show_image=False)`` never calls. This shim lives in the benchmark alone."""
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        stub = types.ModuleType("IPython")
        stub.display = types.ModuleType("IPython.display")
        sys.modules["IPython"], sys.modules["IPython.display"] = stub, stub.display
        print(
            "note: IPython is missing here; lucent imported with a stub IPython.display (see import_lucent)"
        )
    from lucent.optvis import param, render

    return param, render


def feature_visualization(
    vm: ds.VisionModel, size: int, steps: int, repeats: int, device: torch.device
) -> None:
    param, render = import_lucent()

    chain = [
        T.pad(12),
        T.jitter(8),
        T.scale([1 + (i - 5) / 50 for i in range(11)]),
        T.rotate([*range(-10, 11), 0, 0, 0, 0, 0]),
        T.jitter(4),
    ]
    print(
        f"\nfeature visualization: EfficientNet-Lite0, {size}x{size}, Fourier + decorrelated color, {steps} steps"
    )
    print(
        f"{'objective':24s} {'deepscope it/s':>15s} {'lucent it/s':>12s} {'ratio':>7s}   (ratios of {repeats} runs)"
    )
    for ours_objective, lucent_objective in (("_blocks.5:3", "_blocks_5:3"), ("_fc:1", "_fc:1")):

        def run_ours(n=steps, objective=ours_objective):
            ds.units.visualize(vm, objective, size=size, steps=n, transforms=chain, lr=0.05)

        # lucent's hook_model leaves a hook on every module after each call: give each call its own copy
        copies = [copy.deepcopy(vm.module) for _ in range(repeats + 1)]

        def run_lucent(n=steps, objective=lucent_objective, copies=copies):
            render.render_vis(
                copies.pop(),
                objective,
                param_f=lambda: param.image(size, fft=True, decorrelate=True),
                thresholds=(n,),
                show_image=False,
                progress=False,
            )

        run_ours(2), run_lucent(2)  # warm up
        ratios, ours_rates, lucent_rates = [], [], []
        for _ in range(repeats):
            ours = steps / timed(run_ours, device)
            theirs = steps / timed(run_lucent, device)
            ours_rates.append(ours)
            lucent_rates.append(theirs)
            ratios.append(ours / theirs)
        print(
            f"{ours_objective:24s} {statistics.median(ours_rates):15.2f} {statistics.median(lucent_rates):12.2f} "
            f"{statistics.median(ratios):6.2f}x   [{min(ratios):.2f}..{max(ratios):.2f}]"
        )


def dataset_of(vm: ds.VisionModel, count: int, device: torch.device) -> torch.Tensor:
    """``count`` distinct 224x224 inputs: random crops and flips of the bundled photos."""
    generator = torch.Generator().manual_seed(0)
    photos = vm.preprocess(list(ds.samples().values())).cpu()
    padded = torch.nn.functional.pad(photos, (16, 16, 16, 16), mode="reflect")
    items = []
    for index in range(count):
        photo = padded[index % len(photos)]
        top, left = torch.randint(0, 33, (2,), generator=generator).tolist()
        crop = photo[:, top : top + 224, left : left + 224]
        items.append(crop.flip(-1) if index % 2 else crop)
    return torch.stack(items).to(device)


def bare_forward(vm: ds.VisionModel, data: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            vm.module(data[start : start + batch_size])


def top_patches_throughput(
    name: str, vm: ds.VisionModel, data: torch.Tensor, layers, batch_size: int, repeats: int, device
) -> None:
    vm.module.eval()

    def ours(crops: bool):
        # crops are cut per hit after the pass: keep them to 6 units a layer (all units of _conv_head would be
        # 1280 x 9 whole-image crops)
        units = list(range(6)) if crops else None
        return lambda: ds.units.top_patches(vm, data, layers, units, k=9, batch_size=batch_size, crops=crops)

    bare_forward(vm, data[: 2 * batch_size], batch_size)
    ours(False)()  # warm up (and the receptive-field trace)
    rows = {"pass only (crops=False)": [], "6 units, with crops": []}
    seconds = {"bare forward": [], **{label: [] for label in rows}}
    for _ in range(repeats):
        bare = timed(lambda: bare_forward(vm, data, batch_size), device)
        seconds["bare forward"].append(bare)
        for label, crops in zip(rows, (False, True), strict=True):
            took = timed(ours(crops), device)
            seconds[label].append(took)
            rows[label].append(bare / took)
    rate = len(data) / statistics.median(seconds["bare forward"])
    print(f"\ntop_patches: {name}, {len(data)} samples, batch {batch_size}, layers {layers}")
    print(
        f"  bare forward (same tensor, same batches, inference_mode): {rate:.1f} samples/s, "
        f"median {statistics.median(seconds['bare forward']):.3f} s"
    )
    for label, ratios in rows.items():
        verdict = "meets" if statistics.median(ratios) >= 0.85 else "MISSES"
        print(
            f"  {label:24s} median {statistics.median(seconds[label]):.3f} s; throughput / bare forward: "
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}..{max(ratios):.2f}] ({verdict} the 0.85x target)"
        )


def unit_vectors(vm: ds.VisionModel, data: torch.Tensor, layer: str, batch_size: int) -> torch.Tensor:
    """Every spatial feature vector of ``layer`` over ``data``, unit-normalized: what the baseline clusters."""
    gathered = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            maps = ds.units.activations(vm, data[start : start + batch_size], layer)
            flat = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).float()
            gathered.append(flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(gathered).cpu()


def concepts_throughput(
    name: str,
    vm: ds.VisionModel,
    data: torch.Tensor,
    layer: str,
    k: int,
    batch_size: int,
    repeats: int,
    device,
) -> None:
    from sklearn.cluster import MiniBatchKMeans

    vm.module.eval()
    vectors = unit_vectors(vm, data, layer, batch_size).numpy()
    per_batch = len(vectors) // len(data) * batch_size

    def baseline() -> None:
        bare_forward(vm, data, batch_size)
        clustering = MiniBatchKMeans(k, batch_size=per_batch, max_iter=1, n_init=1, random_state=0)
        clustering.fit(vectors)  # one pass of mini-batches, then the labels of every vector

    def ours(crops: bool):
        return lambda: ds.units.concepts(vm, data, layer, k, batch_size=batch_size, crops=crops)

    ours(False)()  # warm up (and the receptive-field trace)
    rows = {"pass only (crops=False)": [], "with 9 crops per concept": []}
    seconds = {"bare forward + MiniBatchKMeans": [], **{label: [] for label in rows}}
    for _ in range(repeats):
        reference = timed(baseline, device)
        seconds["bare forward + MiniBatchKMeans"].append(reference)
        for label, crops in zip(rows, (False, True), strict=True):
            took = timed(ours(crops), device)
            seconds[label].append(took)
            rows[label].append(reference / took)
    print(
        f"\nconcepts: {name}, {len(data)} samples at {layer} ({len(vectors):,} vectors of {vectors.shape[1]}), "
        f"k={k}, batch {batch_size} ({per_batch:,} vectors)"
    )
    print(
        f"  bare forward + scikit-learn MiniBatchKMeans (one pass, then labels): median "
        f"{statistics.median(seconds['bare forward + MiniBatchKMeans']):.3f} s"
    )
    for label, ratios in rows.items():
        verdict = "meets" if statistics.median(ratios) >= 0.8 else "MISSES"
        print(
            f"  {label:26s} median {statistics.median(seconds[label]):.3f} s; throughput / baseline: "
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}..{max(ratios):.2f}] ({verdict} the 0.8x target)"
        )


def inverter_costs(lenet: ds.VisionModel, epochs: int, repeats: int, device: torch.device) -> None:
    train = ds.datasets.mnist5k("train")
    started = time.perf_counter()
    inverter = ds.units.train_inverter(lenet, train, "conv1", epochs=epochs)
    synchronize(device)
    training = time.perf_counter() - started
    print(
        f"\ndecoder inversion: LeNet-5 conv1, trained on {len(train)} digits for {epochs} epochs (width 64): "
        f"{training:.1f} s; loss per epoch {', '.join(f'{loss:.4f}' for loss in inverter.losses)}"
    )
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:256])
    calls = []
    hook = lenet.module.register_forward_hook(lambda *_: calls.append(1))
    try:
        inverter(x)
    finally:
        hook.remove()
    print(f"  model forwards to invert a batch of {len(x)}: {len(calls)}")

    def to_conv1() -> None:
        with torch.inference_mode():
            ds.units.activations(lenet, x, "conv1")

    decoder = statistics.median(timed(lambda: inverter(x), device) for _ in range(repeats)) / len(x)
    forward = statistics.median(timed(to_conv1, device) for _ in range(repeats)) / len(x)
    few = x[:8]
    schedule = [(300, 1.0), (200, 0.1)]
    optimization = timed(lambda: ds.units.invert(lenet, few, "conv1", schedule=schedule), device) / len(few)
    print(
        f"  per image: forward to conv1 {forward * 1e3:.3f} ms, decoder inversion {decoder * 1e3:.3f} ms "
        f"({decoder / forward:.1f}x the forward), optimization (500 steps) {optimization * 1e3:.1f} ms "
        f"({optimization / decoder:.0f}x the decoder)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--digits", type=int, default=5000, help="digits for the LeNet concepts")
    parser.add_argument("--inverter-epochs", type=int, default=10)
    parser.add_argument(
        "--only",
        choices=("featurevis", "top_patches", "concepts", "inverter"),
        default=None,
        help="run one of the parts",
    )
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    def wanted(part: str) -> bool:
        return arguments.only in (None, part)

    lite0 = ds.load_model("zoo:efficientnet_lite0")
    lite0.module.to(device)
    if wanted("featurevis"):
        feature_visualization(lite0, arguments.size, arguments.steps, arguments.repeats, device)
    data = dataset_of(lite0, arguments.samples, device)
    lenet = ds.load_model("zoo:lenet_mnist")
    lenet.module.to(device)
    digits = lenet.preprocess(ds.datasets.mnist5k().images[: arguments.digits])
    if wanted("top_patches"):
        top_patches_throughput(
            "EfficientNet-Lite0",
            lite0,
            data,
            ["_blocks.5", "_blocks.10", "_blocks.15", "_conv_head"],
            32,
            arguments.repeats,
            device,
        )
        top_patches_throughput(
            "LeNet-5 on MNIST-5k",
            lenet,
            digits,
            ["conv1", "conv2", "fc1", "fc3"],
            500,
            arguments.repeats,
            device,
        )
    if wanted("concepts"):
        concepts_throughput("LeNet-5 on MNIST-5k", lenet, digits, "conv2", 32, 250, arguments.repeats, device)
        concepts_throughput("EfficientNet-Lite0", lite0, data, "_blocks.5", 64, 32, arguments.repeats, device)
    if wanted("inverter"):
        inverter_costs(lenet, arguments.inverter_epochs, arguments.repeats, device)


if __name__ == "__main__":
    main()
