"""The engines that compute a scan's chunks: the local one (a loop in this process) and Ray's (a pool of Ray
Data actors).

Both turn chunk numbers into :class:`~deepscope.atlas.scanning.scanner.ChunkResult` s with the same
:class:`~deepscope.atlas.scanning.scanner.ChunkScanner`. A Ray actor holds its own copy of the model (on its GPU
when the cluster has GPUs: one GPU per actor) and the dataset (rebuilt from its spec where the scan got a spec
string); the driver commits the results as they stream in, in any order, and merges the actors' reductions
(top-k, histograms, confusion matrix), which are mergeable by construction, so the result equals the local
scan's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from deepscope.atlas.scanning.plan import ScanPlan
from deepscope.atlas.scanning.scanner import ChunkResult, ChunkScanner
from deepscope.errors import SettingError
from deepscope.zoo.datasets import load_dataset
from deepscope.zoo.vision_model import VisionModel

ENGINES = ("local", "ray")


def chunk_results(
    engine: str,
    vm: VisionModel,
    data: str | Dataset,
    dataset: Dataset,
    plan: ScanPlan,
    pending: list[int],
    *,
    address: str | None = None,
    actors: int | None = None,
    workers: int | None = None,
) -> Iterable[ChunkResult]:
    """The results of the ``pending`` chunks of ``plan`` as ``engine`` computes them: in order for the local
    engine, as they arrive for Ray's (``data``: what the scan was given, a spec string Ray's actors rebuild the
    dataset from; ``dataset``: the data loaded here).

    >>> import deepscope as ds
    >>> from deepscope.atlas.scanning.plan import plan_scan
    >>> vm, digits = ds.load_model("zoo:lenet_mnist"), ds.datasets.mnist5k("test").subset(range(300))
    >>> plan = plan_scan(vm, digits, "fc3:input", batch_size=64, chunk_size=100, k=4, thumbnail_size=0)
    >>> [result.chunk for result in chunk_results("local", vm, digits, digits, plan, [0, 2])]
    [0, 2]
    """
    if engine == "local":
        scanner = ChunkScanner(vm, dataset, plan, workers=workers)
        return (scanner.scan_chunk(chunk) for chunk in pending)
    if engine == "ray":
        return ray_chunks(
            vm, data if isinstance(data, str) else dataset, plan, pending, address, actors, workers
        )
    raise SettingError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


class _ScanActor:
    """A Ray Data callable class: one per actor, built once, called with batches of chunk numbers."""

    def __init__(
        self, vm: VisionModel, data: str | Dataset, plan: dict, threads: int | None, workers: int | None
    ):
        if threads:
            torch.set_num_threads(threads)
        device = torch.device("cuda") if torch.cuda.is_available() and _ray_gpu_ids() else vm.device
        if device != vm.device:
            vm = vm.with_module(vm.module.to(device))  # the actor's own copy, never the user's model
        dataset = load_dataset(data, vm.labels)
        self.scanner = ChunkScanner(vm, dataset, ScanPlan.from_dict(plan), device, workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks = [int(chunk) for chunk in batch["chunk"]]
        blobs = [self.scanner.scan_chunk(chunk).to_bytes() for chunk in chunks]
        return {"chunk": np.asarray(chunks, dtype=np.int64), "result": np.asarray(blobs, dtype=object)}


def _ray_gpu_ids() -> list:
    """The GPUs Ray gave this worker."""
    import ray

    return list(ray.get_gpu_ids())


def ray_chunks(
    vm: VisionModel,
    data: str | Dataset,
    plan: ScanPlan,
    chunks: Sequence[int],
    address: str | None = None,
    actors: int | None = None,
    workers: int | None = None,
) -> Iterator[ChunkResult]:
    """Compute ``chunks`` on a Ray Data actor pool and yield each result as it arrives.

    ``address``: an existing cluster ('auto', 'ray://host:10001', ...); default: the running Ray instance or a
    new local one. ``actors``: the pool size (default: one per GPU, else one per two CPUs, at least one).
    ``workers``: loader threads per actor (see :func:`~deepscope.atlas.scanning.loading.default_workers`).
    (No example here: it starts Ray. ``tests/test_atlas.py`` checks that it equals the local engine.)
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise SettingError("engine='ray' needs Ray Data: pip install 'deepscope[ray]'") from None
    if not chunks:
        return
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    elif address is not None:
        raise SettingError(
            f"Ray is already initialized in this process; cannot connect to {address!r} as well "
            "(call ray.shutdown() first, or leave address=None to use the running instance)"
        )
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(int(resources.get("CPU", 1)), 1)
    if actors is None:
        actors = gpus if gpus else max(cpus // 2, 1)
    actors = max(1, min(actors, len(chunks)))
    cpus_per_actor = 1 if gpus else max(cpus // actors, 1)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    ordered = ray.data.from_items(
        [{"chunk": int(chunk)} for chunk in chunks], override_num_blocks=len(chunks)
    )
    results = ordered.map_batches(
        _ScanActor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={
            "vm": vm,
            "data": data,
            "plan": plan.to_dict(),
            "threads": cpus_per_actor,
            "workers": workers,
        },
        num_gpus=1 if gpus else 0,
        num_cpus=cpus_per_actor,
    )
    for batch in results.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=1):
        for blob in batch["result"]:
            yield ChunkResult.from_bytes(bytes(blob))
