"""The shortcuts behind top_patches' speed give exactly what the plain computations give.

- TopK on the CPU ranks only the entries of a batch that are not below a unit's current k-th value; fed in
  batches no larger than k it ranks every entry. Both must equal a brute-force sort, with ties and special values.
- Crops are cut for many hits at once by gathers; each must equal slicing the image padded with the fill value.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepscope.units.patches import _crop_many
from deepscope.units.topk import TopK


def brute_force_maps(maps: torch.Tensor, samples: torch.Tensor, k: int):
    """Per unit: (max over positions desc, sample asc), first position of the maximum; NaN ranks first."""
    flat = maps.flatten(2).double()
    values, positions = flat.nan_to_num(nan=1e300, posinf=1e200, neginf=-1e200).max(2)
    out_values, out_samples, out_positions = [], [], []
    for unit in range(maps.shape[1]):
        rows = sorted(range(len(samples)), key=lambda r: (-values[r, unit].item(), samples[r].item()))[:k]
        out_values.append(
            [flat[r, unit].max().item() if not flat[r, unit].isnan().any() else 7.0 for r in rows]
        )
        out_samples.append([samples[r].item() for r in rows])
        out_positions.append([positions[r, unit].item() for r in rows])
    return out_values, out_samples, out_positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_large_batches_equal_small_batches_and_brute_force(dtype, k):
    generator = torch.Generator().manual_seed(k)
    special = torch.tensor([0.0, -0.0, 1.0, 2.0, 2.0, -torch.inf, torch.inf, float("nan"), -3.0])
    maps = special[torch.randint(len(special), (240, 5, 2, 3), generator=generator)]
    maps[torch.rand(maps.shape, generator=generator) < 0.9] = -5.0  # rare maxima: few candidates per batch
    samples = torch.randperm(240, generator=generator) * 3  # unsorted sample ids
    results = []
    for batch in (120, 37, k):  # the candidate path (batch > k) and the dense path (batch <= k)
        topk = TopK(units=5, k=k, dtype=dtype)
        for start in range(0, 240, batch):
            topk.update_maps(maps[start : start + batch].to(dtype), samples[start : start + batch])
        assert topk.seen == 240
        values, found, positions = topk.result()
        results.append((values.nan_to_num(7.0).tolist(), found.tolist(), positions.tolist()))
    assert results[0] == results[1] == results[2]
    assert results[0] == brute_force_maps(maps, samples, k)


def test_update_with_positions_keeps_them_through_the_candidate_path():
    generator = torch.Generator().manual_seed(5)
    values = torch.randint(0, 4, (300, 3), generator=generator).float()
    positions = torch.randint(0, 99, (300, 3), generator=generator)
    samples = torch.arange(300)
    batched, single = TopK(units=3, k=6), TopK(units=3, k=6)
    for start in range(0, 300, 50):
        batched.update(values[start : start + 50], samples[start : start + 50], positions[start : start + 50])
    for row in range(300):  # one sample at a time: every entry ranked
        single.update(values[row : row + 1], samples[row : row + 1], positions[row : row + 1])
    assert all(torch.equal(a, b) for a, b in zip(batched.result(), single.result(), strict=True))


def test_crops_cut_at_once_equal_padded_slices():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 10, 12, generator=generator)
    windows = torch.tensor(
        [[-3, -2, 4, 5], [0, 0, 7, 7], [5, 8, 12, 15], [-4, 6, 3, 13], [3, 3, 10, 10], [4, -7, 11, 0]]
    )
    cut = _crop_many(images, windows, fill=0.25)
    for image, (top, left, bottom, right), piece in zip(images, windows.tolist(), cut, strict=True):
        padded = F.pad(image, (8, 8, 8, 8), value=0.25)
        assert torch.equal(piece, padded[:, top + 8 : bottom + 8, left + 8 : right + 8])
    whole = _crop_many(images, torch.tensor([[0, 0, 10, 12]] * 6), fill=0.0)
    assert torch.equal(whole, images)
