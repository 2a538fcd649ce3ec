"""deepscope.units on a CUDA device: results stay on the model's device and keep their guarantees there.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_units_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

import deepscope as ds
from deepscope.units.topk import TopK

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def gpu_lenet(lenet):
    return lenet.with_module(copy.deepcopy(lenet.module).cuda())


@pytest.fixture(scope="module")
def digit_batch(gpu_lenet):
    return gpu_lenet.preprocess(ds.datasets.mnist5k().images[:2000])


def test_top_patches_on_cuda_equal_brute_force_on_cuda(gpu_lenet, digit_batch, unchanged):
    with unchanged(gpu_lenet.module):
        hits = ds.units.top_patches(gpu_lenet, digit_batch, ["conv2", "fc1"], k=9, batch_size=500)
    for layer, found in hits.items():
        assert found.values.device.type == "cuda" and found.crops.device.type == "cuda"
        outputs = []
        with torch.no_grad(), ds.capture(gpu_lenet, layer) as record:
            for start in range(0, len(digit_batch), 500):
                record.clear()
                gpu_lenet(digit_batch[start : start + 500])
                outputs.append(record.activations[layer])
        activation = torch.cat(outputs)
        values = activation.flatten(2).amax(2) if activation.ndim == 4 else activation
        order = torch.sort(values.cpu(), dim=0, descending=True, stable=True).indices[:9].T
        assert torch.equal(found.sample_indices.cpu(), order), layer


def test_topk_on_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (400, 7), generator=generator).float()
    samples = torch.randperm(400, generator=generator)
    results = []
    for device in ("cpu", "cuda"):
        topk = TopK(units=7, k=9, device=device)
        for start in range(0, 400, 64):
            topk.update(values[start : start + 64].to(device), samples[start : start + 64].to(device))
        results.append([t.cpu() for t in topk.result()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_projection_visualization_inversion_on_cuda(gpu_lenet, digit_batch, unchanged):
    cpu = gpu_lenet.with_module(copy.deepcopy(gpu_lenet.module).cpu())
    x = digit_batch[:4]
    with unchanged(gpu_lenet.module):
        projected = ds.units.project(gpu_lenet, x, "conv2", 3)
        result = ds.units.visualize(gpu_lenet, "conv2:3", steps=64)
        inverted = ds.units.invert(
            gpu_lenet, x[:2], "conv1", alpha_weight=0.0, schedule=[(300, 1.0), (200, 0.1)]
        )
    assert projected.device.type == "cuda"
    assert torch.allclose(projected.cpu(), ds.units.project(cpu, x.cpu(), "conv2", 3), atol=2e-3)
    assert result.image.device.type == "cuda"
    rerun = ds.units.activations(gpu_lenet, gpu_lenet.normalize(result.image), "conv2")[:, 3].mean((1, 2))
    assert torch.allclose(rerun, result.value, atol=1e-4)
    assert (inverted.error < 0.1).all()
    assert all(p.grad is None for p in gpu_lenet.module.parameters())
