"""Streaming, mergeable top-k per unit: the reduction behind ``top_patches`` and the dataset atlas.

A :class:`TopK` keeps, for each of ``units`` units, the ``k`` largest values seen so far with the index of the
sample each came from and the position (flat index into the unit's spatial map) where it was reached. Memory is
``O(units * k)`` whatever the number of samples, and two reductions over disjoint sets of samples merge into
exactly the reduction over their union, so a dataset can be scanned in shards (threads, processes, Ray tasks) and
the shards combined in any order and grouping. On the CPU, a batch's entries below a unit's current k-th value
are dropped at once and the few others wait (fewer than ``units * k`` besides one batch) to be ranked together,
so a batch costs little more than one comparison per entry.

Order (deterministic, so that every sharding gives the same answer as one pass):

1. larger value first (NaN ranks above every number, as in ``torch.sort``);
2. on equal values, the lower sample index first;
3. within one sample, a unit keeps one hit: its maximum over positions, at the first (lowest flat index)
   position where that maximum is reached (the convention of ``torch.max`` / ``argmax``).

Sample indices must be unique across everything merged into one reduction (each sample seen once), and lie
in ``0 .. 2^32 - 2``.
"""

from __future__ import annotations

import torch

from deepscope.errors import SettingError, SettingTypeError

# Sample index of an empty slot: sorts after every real sample on equal (-inf) values.
EMPTY = torch.iinfo(torch.int64).max
NO_POSITION = -1
# Value dtypes that float32 holds exactly: their order is read from one int64 key per entry.
_KEYED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOW_BITS = (1 << 32) - 1
# Candidates wait until there are this many (or units x k, if more) before they are ranked: each ranking costs a
# few tensor operations whatever its size, and the waiting list is a few hundred KiB at most.
WAITING_MIN = 8192


def _order_keys(values: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """int64 keys whose descending order is (value descending, sample index ascending): the value's float32 bits
    made order-preserving in the high half, ``2^32 - 1 - sample`` in the low half. One ``topk`` on unique keys
    then selects exactly what the two stable sorts would. NaN becomes the largest value and -0.0 equals 0.0,
    as in ``torch.sort``; empty slots rank last."""
    values = values.float() + 0.0  # -0.0 + 0.0 is +0.0
    values = torch.where(values.isnan(), torch.nan, values)  # one NaN, with the sign bit clear
    bits = values.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    low = torch.where(samples == EMPTY, 0, _LOW_BITS - samples)
    return (ordered << 32) | low


class TopK:
    """The ``k`` strongest samples of each of ``units`` units, updated batch by batch and mergeable.

    ``update`` takes per-sample values ``[N, units]`` (for spatial units, use :meth:`update_maps`, which takes
    the maximum over positions); ``merge`` folds in another reduction over other samples; ``result`` returns
    ``values``, ``sample_indices`` and ``positions``, each ``[units, min(k, seen)]``, best first.
    ``state_dict`` / ``from_state_dict`` round-trip through plain tensors (for pickling, ``torch.save`` or
    sending a shard's result between processes).

    >>> import torch
    >>> a, b = TopK(units=2, k=2), TopK(units=2, k=2)
    >>> a.update(torch.tensor([[1.0, 5.0], [3.0, 0.0]]), sample_indices=torch.tensor([0, 1]))
    >>> b.update(torch.tensor([[3.0, 4.0]]), sample_indices=torch.tensor([2]))
    >>> values, samples, _ = a.merge(b).result()
    >>> values.tolist(), samples.tolist()  # unit 0: a tie at 3.0 goes to the lower sample index
    ([[3.0, 3.0], [5.0, 4.0]], [[1, 2], [0, 2]])
    """

    def __init__(
        self,
        units: int,
        k: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if not isinstance(units, int) or units < 1:
            raise SettingError(f"units must be a positive int, got {units!r}")
        if not isinstance(k, int) or k < 1:
            raise SettingError(f"k must be a positive int, got {k!r}")
        if not dtype.is_floating_point:
            raise SettingError(f"dtype must be a floating-point dtype, got {dtype}")
        self.units = units
        self.k = k
        self.seen = 0
        self._values = torch.full((units, k), -torch.inf, dtype=dtype, device=device)
        self._sample_indices = torch.full((units, k), EMPTY, dtype=torch.int64, device=device)
        self._positions = torch.full((units, k), NO_POSITION, dtype=torch.int64, device=device)
        # Candidates not merged yet: (units, values, sample indices, positions), each flat (see _add).
        self._waiting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._waiting_count = 0

    @property
    def values(self) -> torch.Tensor:
        """``[units, k]`` the best values so far, best first (``-inf`` in empty slots)."""
        self._flush()
        return self._values

    @property
    def sample_indices(self) -> torch.Tensor:
        """``[units, k]`` the sample index of each value (``EMPTY`` in empty slots)."""
        self._flush()
        return self._sample_indices

    @property
    def positions(self) -> torch.Tensor:
        """``[units, k]`` where each value was reached (flat spatial index; -1 = none)."""
        self._flush()
        return self._positions

    @property
    def device(self) -> torch.device:
        return self._values.device

    @property
    def dtype(self) -> torch.dtype:
        return self._values.dtype

    def update(
        self,
        values: torch.Tensor,
        sample_indices: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> None:
        """Add one value per sample and unit: ``values [N, units]``, ``sample_indices [N]`` (int) and, for
        spatial units, ``positions [N, units]`` (flat index of where each value was reached; -1 = none)."""
        if values.ndim != 2 or values.shape[1] != self.units:
            raise SettingError(f"values must be [N, {self.units}], got shape {list(values.shape)}")
        count = values.shape[0]
        sample_indices = self._checked_samples(sample_indices, count)
        if positions is not None and positions.shape != values.shape:
            raise SettingError(
                f"positions must have the shape of values {list(values.shape)}, got {list(positions.shape)}"
            )
        if count == 0:
            return
        if positions is not None:
            positions = positions.detach().to(self.device, torch.int64)
        self._add(values.detach().to(self.device, self.dtype), sample_indices, positions)
        self.seen += count

    def _checked_samples(self, sample_indices, count: int) -> torch.Tensor:
        """``sample_indices`` as ``count`` int64 indices on the reduction's device, or a clear error."""
        sample_indices = torch.as_tensor(sample_indices, device=self.device)
        if sample_indices.is_floating_point() or sample_indices.shape != (count,):
            raise SettingError(
                f"sample_indices must be {count} integers (one per row of values), "
                f"got {sample_indices.dtype} of shape {list(sample_indices.shape)}"
            )
        # (checked on the CPU only: on an accelerator the check would cost a synchronization per batch)
        if (
            count
            and sample_indices.device.type == "cpu"
            and (int(sample_indices.min()) < 0 or int(sample_indices.max()) >= _LOW_BITS)
        ):
            raise SettingError(f"sample indices must lie in 0 .. {_LOW_BITS - 1}")
        return sample_indices.to(torch.int64)

    def _add(
        self,
        values: torch.Tensor,
        samples: torch.Tensor,
        positions: torch.Tensor | None,
        maps: torch.Tensor | None = None,
    ) -> None:
        """Merge checked candidates: ``values [N, units]``, ``samples [N]`` and either ``positions [N, units]``,
        or ``maps [N, units, P]`` whose (first) argmax gives the position of the entries that are kept, or
        neither (no position)."""
        count = values.shape[0]
        if self.device.type == "cpu" and count > self.k and self.seen >= self.k:
            # Only entries that rank at least level with a unit's current k-th can enter its top k: anything
            # not below the k-th value (NaN included, as NaN < x is false). Once the k slots are filled (before,
            # the dense path below is cheaper: every entry would be a candidate) these are a few per batch: they
            # wait, flat, and are ranked (exactly, by key) once they are as many as the k slots or WAITING_MIN,
            # instead of ranking all N x units entries of every batch. Meanwhile the threshold
            # is a k-th value that is no higher than the true one, so nothing that could enter is left out.
            # (On an accelerator, counting the candidates would cost a synchronization per batch; the dense
            # path below is cheap there.)
            rows, units = (values < self._values[:, -1]).logical_not_().nonzero(as_tuple=True)
            if rows.numel() == 0:
                return
            if maps is not None:
                found = maps[rows, units].argmax(dim=1)
            elif positions is not None:
                found = positions[rows, units]
            else:
                found = torch.full_like(rows, NO_POSITION)
            self._waiting.append((units, values[rows, units], samples[rows], found))
            self._waiting_count += rows.numel()
            if self._waiting_count >= max(self.units * self.k, WAITING_MIN):
                self._flush()
            return
        self._flush()
        if maps is not None:
            # Only the maxima are needed to rank; where each maximum lies is looked up afterwards for the few
            # entries this batch placed in the top k (their batch row travels, encoded as -2 - row).
            positions = -2 - torch.arange(count, device=self.device)[:, None].expand(count, self.units)
        elif positions is None:
            positions = torch.full((count, self.units), NO_POSITION, dtype=torch.int64, device=self.device)
        self._select(values.T, samples[None, :].expand(self.units, count), positions.T)
        if maps is not None:
            pending = self._positions <= -2
            row = (-2 - self._positions).clamp(0, count - 1)
            unit = torch.arange(self.units, device=self.device)[:, None].expand_as(row)
            found = maps[row, unit].argmax(dim=2)
            self._positions = torch.where(pending, found, self._positions)

    def _flush(self) -> None:
        """Rank the waiting candidates into the top k: laid out densely, one row per unit, then selected."""
        if not self._waiting:
            return
        units, values, samples, positions = (torch.cat(column) for column in zip(*self._waiting, strict=True))
        self._waiting, self._waiting_count = [], 0
        counts = torch.bincount(units, minlength=self.units)
        width = int(counts.max())
        order = units.argsort()  # grouped by unit (the order within a unit does not matter: keys are unique)
        units = units[order]
        rank = torch.arange(len(units), device=self.device) - (counts.cumsum(0) - counts)[units]
        dense_values = torch.full((self.units, width), -torch.inf, dtype=self.dtype, device=self.device)
        dense_samples = torch.full((self.units, width), EMPTY, dtype=torch.int64, device=self.device)
        dense_positions = torch.full((self.units, width), NO_POSITION, dtype=torch.int64, device=self.device)
        dense_values[units, rank] = values[order]
        dense_samples[units, rank] = samples[order]
        dense_positions[units, rank] = positions[order]
        self._select(dense_values, dense_samples, dense_positions)

    def update_maps(self, activations: torch.Tensor, sample_indices: torch.Tensor) -> None:
        """Add a batch of activations ``[N, units, *spatial]``: each unit's value for a sample is its maximum
        over positions, at the first position where it is reached. ``[N, units]`` works too (no positions)."""
        if activations.ndim < 2 or activations.shape[1] != self.units:
            raise SettingError(
                f"activations must be [N, {self.units}, ...], got shape {list(activations.shape)}"
            )
        if activations.ndim == 2:
            self.update(activations, sample_indices)
            return
        flat = activations.detach().flatten(2).to(self.device)
        count = flat.shape[0]
        sample_indices = self._checked_samples(sample_indices, count)
        if count == 0:
            return
        self._add(flat.amax(dim=2).to(self.dtype), sample_indices, None, maps=flat)
        self.seen += count

    def merge(self, other: TopK) -> TopK:
        """Fold in ``other`` (a reduction over other samples) in place and return ``self``."""
        if not isinstance(other, TopK):
            raise SettingTypeError(f"can only merge another TopK, got {type(other).__name__}")
        if (other.units, other.k) != (self.units, self.k):
            raise SettingError(
                f"cannot merge a TopK of {other.units} units, k={other.k} into one of {self.units} units, k={self.k}"
            )
        self._flush()
        self._select(
            other.values.to(self.device, self.dtype),
            other.sample_indices.to(self.device),
            other.positions.to(self.device),
        )
        self.seen += other.seen
        return self

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(values, sample_indices, positions)``, each ``[units, min(k, seen)]``, best first."""
        filled = min(self.k, self.seen)
        return (
            self.values[:, :filled].clone(),
            self.sample_indices[:, :filled].clone(),
            self.positions[:, :filled].clone(),
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole state as plain tensors (``units`` and ``k`` are the shape of ``values``)."""
        return {
            "values": self.values.clone(),
            "sample_indices": self.sample_indices.clone(),
            "positions": self.positions.clone(),
            "seen": torch.tensor(self.seen, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], device: torch.device | str | None = None
    ) -> TopK:
        """Rebuild a reduction saved with :meth:`state_dict` (on ``device``, default where it was saved)."""
        missing = {"values", "sample_indices", "positions", "seen"} - set(state)
        if missing:
            raise SettingError(f"not a TopK state: missing {', '.join(sorted(missing))}")
        values = state["values"]
        if (
            values.ndim != 2
            or state["sample_indices"].shape != values.shape
            or state["positions"].shape != values.shape
        ):
            raise SettingError(
                "not a TopK state: values, sample_indices and positions must share one [units, k] shape"
            )
        device = values.device if device is None else device
        topk = cls(values.shape[0], values.shape[1], device=device, dtype=values.dtype)
        topk.values.copy_(values)
        topk.sample_indices.copy_(state["sample_indices"])
        topk.positions.copy_(state["positions"])
        topk.seen = int(state["seen"])
        return topk

    def to(self, device: torch.device | str) -> TopK:
        """A copy on ``device``."""
        return TopK.from_state_dict(self.state_dict(), device=device)

    def _select(self, values: torch.Tensor, samples: torch.Tensor, positions: torch.Tensor) -> None:
        """Keep the best k of the current entries and the candidates (each ``[units, m]``)."""
        values = torch.cat([self._values, values], dim=1)
        samples = torch.cat([self._sample_indices, samples], dim=1)
        positions = torch.cat([self._positions, positions], dim=1)
        if self.dtype in _KEYED_DTYPES:
            chosen = _order_keys(values, samples).topk(min(self.k, values.shape[1]), dim=1).indices
        else:
            # Two stable sorts give the order (value descending, then sample index ascending).
            by_sample = samples.argsort(dim=1, stable=True)
            values, samples, positions = (t.gather(1, by_sample) for t in (values, samples, positions))
            chosen = values.argsort(dim=1, descending=True, stable=True)[:, : self.k]
        self._values = values.gather(1, chosen)
        self._sample_indices = samples.gather(1, chosen)
        self._positions = positions.gather(1, chosen)

    def __repr__(self) -> str:
        return f"TopK(units={self.units}, k={self.k}, seen={self.seen}, device={self.device})"
