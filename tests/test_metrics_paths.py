"""The fast paths of the metrics give the same results as the general ones.

Chunks that hold whole steps (or whole perturbations) are built by broadcasting, the others by gathering their
samples; the pointing game's tolerance is an exact disk test around the peaks. Each is checked here against
the other path or a brute-force reference.
"""

from __future__ import annotations

import pytest
import torch

import deepscope as ds


def _brute_force_pointing(maps: torch.Tensor, masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Hit when any peak pixel is within ``tolerance`` (Euclidean) of any object pixel; NaN for empty masks."""
    hits = []
    for relevance, mask in zip(maps.sum(1), masks, strict=True):
        if not mask.any():
            hits.append(float("nan"))
            continue
        peaks = torch.nonzero(relevance == relevance.max()).double()
        objects = torch.nonzero(mask).double()
        hits.append(float(torch.cdist(peaks, objects).min() <= tolerance))
    return torch.tensor(hits)


@pytest.mark.parametrize("tolerance", [0, 0.5, 1, 1.5, 2.9, 3, 4.2, 7])
def test_pointing_game_equals_a_brute_force_distance_test(tolerance):
    generator = torch.Generator().manual_seed(int(tolerance * 10))
    batch, height, width = 24, 19, 23
    maps = torch.randint(0, 40, (batch, 2, height, width), generator=generator).float()  # some tied peaks
    maps[0] = 0  # every pixel is a peak
    masks = torch.rand(batch, height, width, generator=generator) > 0.97
    masks[1] = False  # no object: NaN
    masks[2, 0, 0] = True  # an object in the corner (padding at the border)
    ours = ds.metrics.pointing_game(
        None, torch.zeros(batch, 2, height, width), maps, masks=masks, tolerance=tolerance
    )
    expected = _brute_force_pointing(maps, masks, tolerance)
    torch.testing.assert_close(ours, expected.float(), equal_nan=True)
    assert float(ours.nansum()) > 0
    if tolerance <= 3:
        assert float(ours.nansum()) < batch - 1  # misses too


@pytest.mark.parametrize("batch_size", [3, 6, 12, 1000])  # batch of 3: whole steps in a chunk, or not
def test_curves_and_infidelity_agree_across_chunkings(lenet, batch_size):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:3])
    maps = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    target = ds.metrics.fixed_target(lenet, x)

    def run(size: int) -> list[torch.Tensor]:
        return [
            ds.metrics.pixel_flipping(lenet, x, maps, target, per_step=98, batch_size=size).curve,
            ds.metrics.insertion(lenet, x, maps, target, per_step=98, batch_size=size).curve,
            ds.metrics.region_perturbation(lenet, x, maps, target, region_size=7, batch_size=size).curve,
            ds.metrics.infidelity(lenet, x, maps, target, samples=5, normalize=False, batch_size=size),
            ds.metrics.infidelity(
                lenet, x, maps, target, perturbation=torch.randn(4, 3, 1, 28, 28), batch_size=size
            ),
        ]

    torch.manual_seed(0)
    reference = run(1)  # one input per chunk: every chunk gathers
    torch.manual_seed(0)
    for result, expected in zip(run(batch_size), reference, strict=True):
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
