"""The Ray engine of the scan: the same chunks, computed by a pool of Ray Data actors.

Each actor holds its own copy of the model (on its GPU when the cluster has GPUs: one GPU per actor) and the
dataset (rebuilt from its spec where the scan got a spec string), and turns chunk numbers into
:class:`~deepscope.atlas.scan.ChunkResult` s with exactly the code of the local engine. The driver commits the
results as they stream in — in any order — and merges the actors' reductions (top-k, histograms, confusion
matrix), which are mergeable by construction, so the result equals the local scan's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from deepscope.atlas.scan import ChunkResult, ChunkScanner, ScanPlan
from deepscope.errors import DeepscopeError
from deepscope.zoo.vision_model import VisionModel


class _ScanActor:
    """A Ray Data callable class: one per actor, built once, called with batches of chunk numbers."""

    def __init__(
        self, vm: VisionModel, data: str | Dataset, plan: dict, threads: int | None, workers: int | None
    ):
        from deepscope.zoo.datasets import load_dataset

        if threads:
            torch.set_num_threads(threads)
        device = torch.device("cuda") if torch.cuda.is_available() and ray_gpu_ids() else vm.device
        if device != vm.device:
            vm = vm.with_module(vm.module.to(device))  # the actor's own copy, never the user's model
        dataset = load_dataset(data, vm.labels)
        self.scanner = ChunkScanner(vm, dataset, ScanPlan.from_dict(plan), device, workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks = [int(chunk) for chunk in batch["chunk"]]
        blobs = [self.scanner.scan_chunk(chunk).to_bytes() for chunk in chunks]
        return {"chunk": np.asarray(chunks, dtype=np.int64), "result": np.asarray(blobs, dtype=object)}


def ray_gpu_ids() -> list:
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
    ``workers``: loader threads per actor (see :func:`~deepscope.atlas.scan.default_workers`).
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise DeepscopeError("engine='ray' needs Ray Data: pip install 'deepscope[ray]'") from None
    if not chunks:
        return
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    elif address is not None:
        raise DeepscopeError(
            f"Ray is already initialised in this process; cannot connect to {address!r} as well "
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
