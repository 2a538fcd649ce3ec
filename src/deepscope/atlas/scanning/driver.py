"""The scan's driver: the one process that plans a scan, finds or starts its run in the workspace, has an engine
compute the chunks not yet committed, and commits them as they come."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from deepscope.atlas.scanning.commit import start_run, write_chunks
from deepscope.atlas.scanning.engines import ENGINES, chunk_results
from deepscope.atlas.scanning.fingerprints import model_fingerprint, run_fingerprint
from deepscope.atlas.scanning.plan import ScanPlan, plan_scan
from deepscope.atlas.workspace import Workspace
from deepscope.errors import SettingError, SettingTypeError
from deepscope.workspace.store import Store
from deepscope.zoo.datasets import dataset_fingerprint, dataset_name, load_dataset
from deepscope.zoo.loaders import load_model
from deepscope.zoo.vision_model import VisionModel


def scan(
    model: VisionModel | nn.Module | str,
    data: str | Dataset,
    layers: str | Sequence[str] | None = None,
    engine: str = "local",
    *,
    out: str | Any,
    batch_size: int = 64,
    chunk_size: int = 512,
    k: int = 16,
    thumbnail_size: int = 32,
    progress: bool = False,
    address: str | None = None,
    actors: int | None = None,
    workers: int | None = None,
) -> Workspace:
    """Scan a dataset with a model in one pass and store everything in the workspace directory ``out``.

    Records, per sample: the prediction, class probabilities (softmax), label (when the data has labels), a
    thumbnail, and the pooled activations (spatial mean per unit) of every recorded layer. Per layer, reduced on
    the fly: a histogram of all output values (fixed logarithmic bins, see
    :mod:`deepscope.atlas.scanning.reductions`) with the exact maximum and mean, sparsity, each unit's maximum
    and activity (dead units never fire), and each unit's top-``k`` samples (by its spatial maximum, the
    ``deepscope.units`` reduction). Over the dataset: the confusion matrix.

    ``layers=None`` records the embedding — the input of the last ``nn.Linear`` the model calls, found with
    hooks on a probe pass, so no architecture is special-cased — and every convolution and linear layer's
    output, or for a model with more than 16 of those, each block's output
    (:func:`~deepscope.atlas.scanning.plan.default_layers`); a module the model calls more than once is recorded
    call by call. Otherwise ``layers`` are layer names or globs in the grammar of :mod:`deepscope.probe.layers`
    (``NAME:input`` records a module's input, ``NAME@N`` the N-th call of a module the model reuses); the first
    is the embedding. The model runs in eval mode (restored after) and is otherwise left as found.

    ``batch_size`` samples go through the model at once (the memory knob); ``chunk_size`` samples make one
    committed unit of work (what a resumed scan may redo, what a Ray actor computes per call); ``k`` top samples
    are kept per unit; ``thumbnail_size`` bounds the stored pictures (0: none). On disk a scan takes
    4 bytes x (classes + units of every recorded layer) per sample, plus the thumbnail.

    ``workers`` threads read and preprocess the next batches while the model runs (default: none on the CPU,
    whose cores the forward pass already uses; one per core, at most 8, with an accelerator); with more than one
    the dataset is read from several threads at once, so its ``__getitem__`` must allow that (image files and
    in-memory data do; give ``workers=1`` otherwise). Results never depend on ``workers``.

    ``engine='ray'`` runs the chunks on Ray Data actors (``address``: an existing cluster, default a local
    one; ``actors``: the pool size; ``workers`` per actor). A scan that was stopped resumes when called again
    with the same arguments; a finished one is returned as it is. ``progress=True`` shows a progress bar.

    >>> import tempfile, deepscope as ds
    >>> digits = ds.datasets.mnist5k("test").subset(range(200))
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> ws.predictions.shape, ws.embedding_layer, ws.layers[1:3]
    ((200,), 'fc3:input', ['conv1', 'conv2'])
    """
    if engine not in ENGINES:
        raise SettingError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise SettingTypeError(f"workers must be a whole number >= 0 (loader threads), got {workers!r}")
    if workers is not None and workers < 0:
        raise SettingError(f"workers must be a whole number >= 0 (loader threads), got {workers!r}")
    vm = load_model(model)
    model_name = model if isinstance(model, str) else vm.name
    dataset = load_dataset(data, vm.labels)
    plan = plan_scan(
        vm, dataset, layers, batch_size=batch_size, chunk_size=chunk_size, k=k, thumbnail_size=thumbnail_size
    )
    model_fp = model_fingerprint(vm)
    dataset_fp = dataset_fingerprint(dataset)
    fingerprint = run_fingerprint(model_fp, dataset_fp, plan)
    store = Store.create(out)
    run = store.find_run(fingerprint)
    if run is None or not run.complete:
        with store.writing(fingerprint):
            # Looked up again: another process may have started or finished the run meanwhile.
            run = store.find_run(fingerprint)
            if run is None:
                run = start_run(
                    store,
                    plan,
                    fingerprint=fingerprint,
                    model=model_name,
                    model_fingerprint=model_fp,
                    dataset=dataset_name(dataset),
                    dataset_fingerprint=dataset_fp,
                    vm=vm,
                )
            if not run.complete:
                committed = store.committed_chunks(run.id)
                pending = [chunk for chunk in range(plan.n_chunks) if chunk not in committed]
                results = chunk_results(
                    engine, vm, data, dataset, plan, pending, address=address, actors=actors, workers=workers
                )
                bar = _progress_bar(plan, pending, progress, dataset_name(dataset))
                write_chunks(store, run, plan, results, bar)
                store.finish_run(run.id)
    return Workspace(store, store.run(run.id))


def _progress_bar(plan: ScanPlan, pending: list[int], progress: bool, name: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    done = plan.n_samples - sum(stop - start for start, stop in map(plan.bounds, pending))
    return tqdm(total=plan.n_samples, initial=done, unit="img", desc=f"scan {name}", dynamic_ncols=True)
