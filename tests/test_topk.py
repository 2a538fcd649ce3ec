"""TopK: the streaming, mergeable top-k reduction equals a brute-force sort, however the samples are sharded."""

from __future__ import annotations

import io
import random

import pytest
import torch

from deepscope.units.topk import TopK


def brute_force(values: torch.Tensor, samples: torch.Tensor, positions: torch.Tensor, k: int):
    """Per unit: sort (value descending, sample ascending) with Python's sort and keep k."""
    out_values, out_samples, out_positions = [], [], []
    for unit in range(values.shape[1]):
        rows = sorted(range(values.shape[0]), key=lambda r: (-values[r, unit].item(), samples[r].item()))[:k]
        out_values.append([values[r, unit].item() for r in rows])
        out_samples.append([samples[r].item() for r in rows])
        out_positions.append([positions[r, unit].item() for r in rows])
    return out_values, out_samples, out_positions


def tied_data(count: int = 200, units: int = 7, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 6, (count, units), generator=generator).float()  # many ties
    samples = torch.randperm(count, generator=generator) + 1000  # arbitrary, unsorted sample ids
    positions = torch.randint(0, 50, (count, units), generator=generator)
    return values, samples, positions


@pytest.mark.parametrize("k", [1, 5, 9])
def test_single_pass_equals_brute_force_with_ties(k):
    values, samples, positions = tied_data()
    topk = TopK(units=values.shape[1], k=k)
    for start in range(0, len(samples), 17):
        topk.update(values[start : start + 17], samples[start : start + 17], positions[start : start + 17])
    got = [t.tolist() for t in topk.result()]
    assert got == list(brute_force(values, samples, positions, k))
    assert topk.seen == len(samples)


def test_any_sharding_and_merge_order_equals_single_pass():
    values, samples, positions = tied_data(count=300, seed=1)
    single = TopK(units=values.shape[1], k=9)
    single.update(values, samples, positions)
    expected = [t.tolist() for t in single.result()]
    rng = random.Random(0)
    for _ in range(5):
        order = list(range(len(samples)))
        rng.shuffle(order)
        cuts = sorted(rng.sample(range(1, len(order)), 6))
        shards = []
        for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
            rows = torch.tensor(order[lo:hi])
            shard = TopK(units=values.shape[1], k=9)
            shard.update(values[rows], samples[rows], positions[rows])
            shards.append(shard)
        rng.shuffle(shards)
        while len(shards) > 1:  # merge in a random tree
            a, b = shards.pop(rng.randrange(len(shards))), shards.pop(rng.randrange(len(shards)))
            shards.append(a.merge(b))
        assert [t.tolist() for t in shards[0].result()] == expected
        assert shards[0].seen == len(samples)


def test_state_dict_round_trip_through_torch_save():
    values, samples, positions = tied_data(count=40)
    topk = TopK(units=values.shape[1], k=4)
    topk.update(values, samples, positions)
    buffer = io.BytesIO()
    torch.save(topk.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = TopK.from_state_dict(state)
    assert again.seen == 40 and (again.units, again.k) == (values.shape[1], 4)
    for a, b in zip(again.result(), topk.result(), strict=True):
        assert torch.equal(a, b)
    # a restored reduction keeps streaming
    more = torch.full((1, values.shape[1]), 99.0)
    again.update(more, torch.tensor([7]))
    assert again.result()[1][:, 0].tolist() == [7] * values.shape[1]


def test_update_maps_takes_the_first_maximum_over_positions():
    activations = torch.zeros(2, 2, 3, 3)
    activations[0, 0, 1, 2] = 5.0
    activations[0, 0, 2, 0] = 5.0  # same maximum later: the first (flat index 5) wins
    activations[1, 1, 0, 1] = 2.0
    topk = TopK(units=2, k=2)
    topk.update_maps(activations, torch.tensor([10, 11]))
    values, samples, positions = topk.result()
    assert values.tolist() == [[5.0, 0.0], [2.0, 0.0]]
    assert samples.tolist() == [[10, 11], [11, 10]]
    assert positions.tolist() == [[5, 0], [1, 0]]
    linear = TopK(units=2, k=1)
    linear.update_maps(torch.tensor([[1.0, -1.0]]), torch.tensor([3]))
    assert linear.result()[2].tolist() == [[-1], [-1]]  # no spatial map: no position


def test_fewer_samples_than_k_and_extreme_values():
    topk = TopK(units=1, k=5)
    assert [t.shape for t in topk.result()] == [torch.Size([1, 0])] * 3
    topk.update(torch.tensor([[-torch.inf], [float("nan")], [1.0]]), torch.tensor([0, 1, 2]))
    values, samples, _ = topk.result()
    assert samples.tolist() == [[1, 2, 0]]  # NaN ranks first, -inf is a real value that ranks last
    assert torch.isnan(values[0, 0]) and values[0, 2] == -torch.inf


def test_bad_input_is_refused_clearly():
    topk = TopK(units=3, k=2)
    with pytest.raises(ValueError, match=r"values must be \[N, 3\]"):
        topk.update(torch.zeros(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match="sample_indices must be 4 integers"):
        topk.update(torch.zeros(4, 3), torch.arange(3))
    with pytest.raises(ValueError, match="positions must have the shape"):
        topk.update(torch.zeros(4, 3), torch.arange(4), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot merge"):
        topk.merge(TopK(units=3, k=5))
    with pytest.raises(ValueError, match="k must be a positive int"):
        TopK(units=3, k=0)
    with pytest.raises(ValueError, match="missing"):
        TopK.from_state_dict({"values": torch.zeros(1, 1)})


def test_float32_keys_order_exactly_like_the_two_sorts():
    """float32 reductions select by one int64 key per entry, float64 ones by two stable sorts: same answer."""
    generator = torch.Generator().manual_seed(3)
    special = torch.tensor([0.0, -0.0, torch.inf, -torch.inf, float("nan"), -1.5, 1.5, 2.0**-140])
    values = special[torch.randint(len(special), (300, 5), generator=generator)]
    samples = torch.randperm(300, generator=generator) * 7
    results = []
    for dtype in (torch.float32, torch.float64):
        topk = TopK(units=5, k=12, dtype=dtype)
        for start in range(0, 300, 64):
            topk.update(values[start : start + 64].to(dtype), samples[start : start + 64])
        results.append(topk.result())
    assert torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][0].double().nan_to_num(7.0), results[1][0].nan_to_num(7.0))
    ranked = values.double().nan_to_num(
        nan=1e300, posinf=1e200, neginf=-1e200
    )  # NaN above inf, as torch.sort
    expected = brute_force(ranked, samples, torch.zeros(300, 5), 12)[1]
    assert results[0][1].tolist() == expected


def test_sample_indices_out_of_range_are_refused():
    with pytest.raises(ValueError, match="must lie in 0"):
        TopK(units=1, k=1).update(torch.zeros(1, 1), torch.tensor([-1]))
