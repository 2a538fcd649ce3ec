"""Heat-map speed: every registered method against the cost floor of its passes and against its peer library.

Run as ``flock /tmp/deepscope-bench.lock python benchmarks/attribution.py [--quick]`` (one benchmark at a time
on a shared machine). For random-init resnet18 and EfficientNet-Lite0 (eval mode) on a batch of 8 photos at
224x224, explaining each photo's top class, it times:

- floors, measured in the same run: ``fwd+bwd``, one forward and one backward to the input
  (``torch.autograd.grad`` of the target logits); ``fwd``, one forward under ``torch.inference_mode()``.
  The targets are ratios to these floors as a user would run the model (standard NCHW layout). Our passes run
  images channels-last (``VisionModel.in_fast_layout``), so the column ``ours/floor cl`` also divides by the
  same bare passes on channels-last inputs: what the method costs beyond its passes;
- ours: ``ds.attribute(model, x, name, target=...)`` (and ``ds.explain`` of the six shared-pass methods);
- the peer on the same inputs and settings: Captum (gradient family, occlusion, guided Grad-CAM),
  pytorch-grad-cam (Grad-CAM, Grad-CAM++, Layer-CAM, Score-CAM) with the same number of model inputs per
  forward. A family without a peer runner shows '-'; ``FAMILY_PEERS`` is where one is added (Zennit for LRP).

Each time is the median of ``--repeats`` runs (1 with ``--quick``) after a warm-up, ours and the peer
interleaved so that machine noise hits both. The floor of a method is its pass count times the measured
``fwd+bwd`` (gradient methods; CAMs too, although they stop at their layer) or ``fwd`` (perturbation
methods, one forward per perturbed input).

``--memory 32,256`` instead measures the peak resident-memory growth of integrated gradients with that many
steps on EfficientNet-Lite0 (batch of 8 at 224x224, ``--memory-batch-size`` path points per forward), one
fresh process per step count: the growth must not follow the number of path points.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision

import deepscope as ds

BATCH = 8
SHARED = ["saliency", "input_x_gradient", "grad_cam", "grad_cam_pp", "layer_cam", "cam"]

SIZE = (224, 224)
# Model inputs per forward of the methods that expand the batch, ours and the peer's.
BATCH_SIZES = {
    "integrated_gradients": 16,
    "smoothgrad": 16,
    "occlusion": 32,
    "rise": 32,
    "score_cam": 32,
    "prediction_difference": 32,
}


def settings(name: str) -> dict:
    """The method's quick options at 224x224 (``Attribution.quick_options``: the paper defaults would take
    minutes per run on a CPU), which the peer gets too."""
    return ds.attribution.method_info(name).quick_options(SIZE)


SCORE_CAM_LAYER = {"resnet18": "layer4", "efficientnet_lite0": "_blocks.15"}  # 512 / 320 channels
# The peers hook modules, not calls: EfficientNet-Lite0's default layer is the second call of the reused
# _swish module, which they cannot name; they hook the batch norm just before it (the same passes).
PEER_LAYER = {"resnet18": "layer4", "efficientnet_lite0": "_bn1"}


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    x: torch.Tensor
    target: list[int]


def cases() -> list[Case]:
    efficientnet = ds.load_model("zoo:efficientnet_lite0")
    torch.manual_seed(0)
    resnet18 = ds.as_vision_model(
        torchvision.models.resnet18().eval(),
        preprocessing=ds.Preprocessing(
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=(224, 224)
        ),
    )
    photos = (list(ds.samples().values()) * 2)[:BATCH]
    found = []
    for name, vm in [("resnet18", resnet18), ("efficientnet_lite0", efficientnet)]:
        x = vm.preprocess(photos)
        with torch.no_grad():
            target = vm.module(x).argmax(1).tolist()
        found.append(Case(name, vm.module, x, target))
    return found


def bare_fwd_bwd(case: Case, layout: torch.memory_format = torch.contiguous_format) -> Callable[[], None]:
    def run() -> None:
        x = case.x.detach().contiguous(memory_format=layout).requires_grad_()
        output = case.model(x)
        torch.autograd.grad(output[range(len(x)), case.target].sum(), x)

    return run


def bare_forward(case: Case, layout: torch.memory_format = torch.contiguous_format) -> Callable[[], None]:
    x = case.x.contiguous(memory_format=layout)

    def run() -> None:
        with torch.inference_mode():
            case.model(x)

    return run


def ours(case: Case, name: str) -> Callable[[], object]:
    options = settings(name)
    if name == "score_cam":
        options["layer"] = SCORE_CAM_LAYER[case.name]
    if name == "prediction_difference":
        options["data"] = case.x
    spec = ds.method(name, batch_size=BATCH_SIZES.get(name), **options)
    return lambda: spec(case.model, case.x, case.target)


# ----------------------------------------------------------------------------------------------------------
# peers


def captum_peer(case: Case, name: str) -> Callable[[], object] | None:
    from captum import attr

    model, x, target = case.model, case.x, case.target
    steps, samples, occlusion = (settings(n) for n in ("integrated_gradients", "smoothgrad", "occlusion"))
    sigma = float(0.15 * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
    runners = {
        "saliency": lambda: attr.Saliency(model).attribute(x, target=target, abs=False),
        "input_x_gradient": lambda: attr.InputXGradient(model).attribute(x, target=target),
        "guided_backprop": lambda: attr.GuidedBackprop(model).attribute(x, target=target),
        "deconvnet": lambda: attr.Deconvolution(model).attribute(x, target=target),
        "integrated_gradients": lambda: attr.IntegratedGradients(model).attribute(
            x, target=target, n_steps=steps["steps"], internal_batch_size=BATCH_SIZES["integrated_gradients"]
        ),
        "smoothgrad": lambda: attr.NoiseTunnel(attr.Saliency(model)).attribute(
            x,
            target=target,
            abs=False,
            nt_type="smoothgrad",
            nt_samples=samples["samples"],
            nt_samples_batch_size=BATCH_SIZES["smoothgrad"] // BATCH,
            stdevs=sigma,
        ),
        "occlusion": lambda: attr.Occlusion(model).attribute(
            x,
            sliding_window_shapes=(3, occlusion["window"], occlusion["window"]),
            strides=(3, occlusion["stride"], occlusion["stride"]),
            target=target,
            perturbations_per_eval=BATCH_SIZES["occlusion"] // BATCH,
        ),
        "guided_grad_cam": lambda: attr.GuidedGradCam(
            model, model.get_submodule(PEER_LAYER[case.name])
        ).attribute(x, target=target, interpolate_mode="bilinear"),
    }
    return runners.get(name)


def grad_cam_peer(case: Case, name: str) -> Callable[[], object] | None:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peers = {
        "grad_cam": pgc.GradCAM,
        "grad_cam_pp": pgc.GradCAMPlusPlus,
        "layer_cam": pgc.LayerCAM,
        "score_cam": pgc.ScoreCAM,
    }
    if name not in peers:
        return None
    layer = SCORE_CAM_LAYER[case.name] if name == "score_cam" else PEER_LAYER[case.name]
    targets = [ClassifierOutputTarget(t) for t in case.target]

    def run():
        with peers[name](case.model, [case.model.get_submodule(layer)]) as cam:
            cam.batch_size = BATCH_SIZES["score_cam"]
            return cam(input_tensor=case.x, targets=targets)

    return run


def cam_family_peer(case: Case, name: str):
    return grad_cam_peer(case, name) or captum_peer(case, name)


# family -> (peer name, runner factory); add "relevance": ("Zennit", ...) once LRP is merged.
FAMILY_PEERS: dict[str, tuple[str, Callable[[Case, str], Callable | None]]] = {
    "gradient": ("Captum", captum_peer),
    "perturbation": ("Captum", captum_peer),
    "cam": ("pytorch-grad-cam", cam_family_peer),
}


def peer_for(case: Case, name: str) -> tuple[str, Callable | None]:
    family = ds.attribution.method_info(name).family
    label, factory = FAMILY_PEERS.get(family, ("-", lambda case, name: None))
    runner = factory(case, name)
    if name == "guided_grad_cam":
        label = "Captum"
    return (label if runner is not None else "-"), runner


# ----------------------------------------------------------------------------------------------------------


def timed(runs: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Median seconds of each runner, interleaved, after one warm-up each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for run in runs.values():
            run()
        found: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                found[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in found.items()}


def floor(name: str, case: Case, times: dict[str, float], layout: str = "") -> tuple[float, str]:
    """The method's cost floor in seconds, and how it was counted; ``layout=" cl"`` counts the bare passes
    with channels-last inputs."""
    options = settings(name)
    if name == "integrated_gradients":
        return options["steps"] * times["fwd+bwd" + layout], f"{options['steps']} fwd+bwd"
    if name == "smoothgrad":
        return options["samples"] * times["fwd+bwd" + layout], f"{options['samples']} fwd+bwd"
    family = ds.attribution.method_info(name).family
    if family == "perturbation" or name == "score_cam":
        count = perturbed_inputs(name, case)
        return count * times["fwd" + layout], f"{count} fwd"
    return times["fwd+bwd" + layout], "1 fwd+bwd"


def perturbed_inputs(name: str, case: Case) -> int:
    """How many forwards of the whole batch a perturbation method needs (the clean one excluded)."""
    options = settings(name)
    size = case.x.shape[-1]
    if name == "occlusion":
        return (
            len(ds.attribution.perturbation.window_positions(size, options["window"], options["stride"])) ** 2
        )
    if name == "rise":
        return options["masks"]
    if name == "prediction_difference":
        positions = len(range(0, size - options["window"] + 1, options["stride"]))
        return positions**2 * options["samples"]
    if name == "score_cam":
        layer = SCORE_CAM_LAYER[case.name]
        with torch.no_grad(), ds.capture(case.model, layer) as recording:
            case.model(case.x[:1])
        return recording.activations[layer].shape[1]
    return 1


TARGETS = {
    "single": ("<= 1.15 fwd+bwd", lambda r, p: r <= 1.15),
    "explain": ("<= 1.5 fwd+bwd", lambda r, p: r <= 1.5),
    "steps": ("<= 1.1 floor, < peer", lambda r, p: r <= 1.1 and (p is None or p < 1)),
    "peer": ("< peer", lambda r, p: p is None or p < 1),
}


def target_of(name: str) -> str | None:
    if name in ("integrated_gradients", "smoothgrad"):
        return "steps"
    if name in ("occlusion", "score_cam"):
        return "peer"
    family = ds.attribution.method_info(name).family
    if family in ("gradient", "cam", "relevance"):
        return "single"
    return None


MEMORY_CHILD = """
import sys, threading, time
import torch, deepscope as ds

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

steps, batch_size = int(sys.argv[1]), int(sys.argv[2])
vm = ds.load_model("zoo:efficientnet_lite0")
x = vm.preprocess((list(ds.samples().values()) * 2)[:8])
ds.attribute(vm, x[:1], "integrated_gradients", steps=2, target=0)  # warm-up: allocator pools, kernels
before, peak, running = rss_mb(), [0.0], [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.002)

watcher = threading.Thread(target=sample)
watcher.start()
start = time.perf_counter()
maps = ds.attribute(vm, x, "integrated_gradients", steps=steps, batch_size=batch_size)
seconds = time.perf_counter() - start
running[0] = False
watcher.join()
print(f"{steps} | {batch_size} | {steps * 8} | {seconds:.1f} | {max(peak[0], rss_mb()) - before:.0f}")
"""


def memory(steps: list[int], batch_size: int) -> None:
    """Peak resident-memory growth of integrated gradients on EfficientNet-Lite0, batch 8 at 224x224, one fresh
    process per step count: bounded memory means the growth does not follow the number of path points."""
    import subprocess
    import sys

    print("integrated_gradients on EfficientNet-Lite0, batch of 8 at 224x224 (fresh process per row)")
    print("| steps | batch_size | model inputs | seconds | peak RSS growth (MB) |")
    print("|---|---|---|---|---|")
    for count in steps:
        found = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(count), str(batch_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"| {found.stdout.strip()} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed run per method instead of --repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet18,efficientnet_lite0")
    parser.add_argument("--methods", default="", help="comma-separated subset (default: the whole registry)")
    parser.add_argument(
        "--memory",
        default="",
        help="only the memory check: comma-separated IG step counts, e.g. 32,256 (peak RSS per fresh process)",
    )
    parser.add_argument("--memory-batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.memory:
        memory([int(n) for n in args.memory.split(",")], args.memory_batch_size)
        return
    repeats = 1 if args.quick else args.repeats
    names = [n for n in args.methods.split(",") if n] or [info.name for info in ds.methods()]
    torch.set_grad_enabled(True)
    rows = []
    for case in cases():
        if case.name not in args.models.split(","):
            continue
        for name in [*names, "explain(6 shared)"]:
            if name == "explain(6 shared)":
                run_ours = lambda case=case: ds.explain(case.model, case.x, SHARED, target=case.target)  # noqa: E731
                peer_label, peer = "six peers", None
            else:
                if ds.attribution.method_info(name).family == "transformer":
                    rows.append([case.name, name, "n/a: needs a transformer", "", "", "", "", "", "", ""])
                    continue
                run_ours = ours(case, name)
                peer_label, peer = peer_for(case, name)
            runs = {
                "fwd+bwd": bare_fwd_bwd(case),
                "fwd": bare_forward(case),
                "fwd+bwd cl": bare_fwd_bwd(case, torch.channels_last),
                "fwd cl": bare_forward(case, torch.channels_last),
                "ours": run_ours,
            }
            if peer is not None:
                runs["peer"] = peer
            times = timed(runs, repeats)
            if name == "explain(6 shared)":
                cost, counted = times["fwd+bwd"], "1 fwd+bwd"
                cost_cl = times["fwd+bwd cl"]
                peer_seconds = sum(
                    timed({"p": r}, repeats)["p"]
                    for n in SHARED
                    for _, r in [peer_for(case, n)]
                    if r is not None
                )
                times["peer"] = peer_seconds
                peer_label = "sum of 5 peers"
                goal = "explain"
            else:
                cost, counted = floor(name, case, times)
                cost_cl = floor(name, case, times, " cl")[0]
                goal = target_of(name)
            ratio = times["ours"] / cost
            versus = times["ours"] / times["peer"] if "peer" in times else None
            if goal is None:
                verdict, goal_text = "", "-"
            else:
                goal_text, check = TARGETS[goal]
                verdict = "ok" if check(ratio, versus) else "MISSED"
            rows.append(
                [
                    case.name,
                    name,
                    f"{times['ours']:.3f}",
                    f"{counted} = {cost:.3f}",
                    f"{ratio:.2f}",
                    f"{times['ours'] / cost_cl:.2f}",
                    f"{peer_label} {times['peer']:.3f}" if "peer" in times else "-",
                    f"{versus:.2f}" if versus is not None else "-",
                    goal_text,
                    verdict,
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = [
        "model",
        "method",
        "ours s",
        "floor s",
        "ours/floor",
        "ours/floor cl",
        "peer s",
        "ours/peer",
        "target",
        "",
    ]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
