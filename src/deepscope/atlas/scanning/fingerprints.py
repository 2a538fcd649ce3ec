"""What makes two scans the same scan: a hash of the model (structure, settings, weights, preprocessing,
class names) and of the run (the model's hash, the data's, see :func:`deepscope.zoo.datasets.dataset_fingerprint`,
and the plan). A scan called again with the same run fingerprint resumes or returns that run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from deepscope.atlas.scanning.plan import ScanPlan
from deepscope.probe.inference import module_settings
from deepscope.zoo.vision_model import VisionModel


def model_fingerprint(vm: VisionModel) -> str:
    """A hash of the model's structure (each module's class and settings), parameters, buffers, preprocessing
    (and custom transform, by its repr where that names its settings, as torchvision's do, else by its type) and
    class names. The train/eval flags are no part of it: a scan runs the model in eval mode.

    >>> import deepscope as ds
    >>> lenet, again = ds.load_model("zoo:lenet_mnist"), ds.load_model("zoo:lenet_mnist")
    >>> model_fingerprint(lenet) == model_fingerprint(again), len(model_fingerprint(lenet))
    (True, 32)
    """
    digest = hashlib.sha256()
    for name, sub in vm.module.named_modules():  # the structure: each module's class and settings
        settings = [
            (key, _stable_name(value) if callable(value) else value) for key, value in module_settings(sub)
        ]
        digest.update(f"{name} {type(sub).__module__}.{type(sub).__qualname__} {settings!r}".encode())
    for name, tensor in [*vm.module.named_parameters(), *vm.module.named_buffers()]:
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr(vm.preprocessing).encode())
    if vm.transform is not None:
        described = repr(vm.transform)
        digest.update((type(vm.transform).__qualname__ if " at 0x" in described else described).encode())
    digest.update(repr(vm.labels).encode())
    return digest.hexdigest()[:32]


def _stable_name(function: Any) -> str:
    """A function's name that is the same in every process (not its repr, which holds its address)."""
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', type(function).__qualname__)}"


def run_fingerprint(model_fp: str, dataset_fp: str, plan: ScanPlan) -> str:
    """The identity of a run: the model's and the data's fingerprints and everything the plan decided.

    >>> from deepscope.atlas.scanning.plan import ScanPlan
    >>> plan = ScanPlan(("fc:input",), (8,), ((8,),), "fc:input", ("a", "b"), 10, 4, 5, 2, None)
    >>> first = run_fingerprint("model", "data", plan)
    >>> first == run_fingerprint("model", "data", plan), first == run_fingerprint("model", "other data", plan)
    (True, False)
    """
    text = json.dumps({"model": model_fp, "dataset": dataset_fp, "plan": plan.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
