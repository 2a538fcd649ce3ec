"""LRP rules for linear layers: how the relevance ``r`` of a layer's outputs is redistributed onto its inputs.

Every rule here is a modified backward pass through one convolution or dense layer ``z = W x + b``
(:class:`~deepscope.attribution.relevance.layers.LinearLayer`), written as a few forward passes with modified
weights (the denominators) and a few adjoint passes (the transposed convolution a gradient would use):

============  ===================================================================  ==============================
rule          relevance of input ``i``                                              reference
============  ===================================================================  ==============================
epsilon       ``x_i Σ_j w_ij r_j / (z_j ± ε)``                                        Bach et al. 2015
z+            ``Σ_j x_i w⁺_ij r_j / Σ_i' x_i' w⁺_i'j`` (and the mirror for x < 0)    Montavon et al. 2017 (DTD)
alpha-beta    ``α`` × positive part − ``β`` × negative part, ``α − β = 1``            Bach et al. 2015
gamma         contributions ``x_i (w_ij + γ w⁺_ij)`` (sign-matched to z_j)             Montavon et al. 2019
flat          every input in the window counts the same: ``Σ_j r_j / n_j``            Lapuschkin et al. 2019
w-square      ``Σ_j w²_ij r_j / Σ_i' w²_i'j``                                         Montavon et al. 2017
z-box         ``x_i w_ij − l_i w⁺_ij − h_i w⁻_ij`` for inputs bounded by [l, h]      Montavon et al. 2017 (DTD)
============  ===================================================================  ==============================

The variants follow Zennit (Anders et al. 2021), whose composites the registered methods reproduce: z+, alpha-beta
and gamma treat negative inputs with the mirrored weights, biases are clamped with the weights they go with, and
denominators are stabilized by ``± stabilizer`` (the sign of the denominator, + at zero). Where a layer's input
has no negative entries (every layer after a ReLU) the mirrored terms are exactly zero and are skipped, and gamma
reuses the layer's own output for its denominators, so z+ costs one extra forward pass per layer and gamma one
(Zennit recomputes two and five).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscope.attribution.relevance.layers import LinearLayer, RelevanceError
from deepscope.errors import SettingError


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + ε·sign(z)``, with sign(0) = +1, so that dividing by it never divides by zero.

    >>> stabilize(torch.tensor([-2.0, 0.0, 3.0]), 0.5)
    tensor([-2.5000,  0.5000,  3.5000])
    """
    return z + torch.where(z >= 0, epsilon, -epsilon)


@dataclass(frozen=True)
class InputDomain:
    """What is known about a layer input that is the model input seen through padding, reshaping or constant
    affine maps: the bounds of each entry (``low``/``high``, for z-box; None where no rule needs them), and
    ``support``, 1 where an entry is a model input entry and 0 where it is padding."""

    low: torch.Tensor | None
    high: torch.Tensor | None
    support: torch.Tensor


def _positive(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def _has_negative(x: torch.Tensor) -> bool:
    return bool((x < 0).any())


class Rule:
    """Base of the linear-layer rules. ``relevance`` maps the relevance ``r`` of the layer's output to its input.

    ``uses_input`` / ``uses_output``: whether the rule reads the layer's input ``x`` / output ``z`` (so the engine
    keeps them for the backward pass); ``needs_bounds``: whether it reads the input's value bounds (z-box).
    ``domain`` describes the layer's input where it is the model input (possibly padded or reshaped).
    """

    uses_input = True
    uses_output = True
    needs_bounds = False

    def relevance(
        self,
        layer: LinearLayer,
        r: torch.Tensor,
        x: torch.Tensor | None,
        z: torch.Tensor | None,
        input_shape: Sequence[int],
        domain: InputDomain | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): ``R_i = x_i Σ_j w_ij R_j / (z_j + ε·sign(z_j))``, bias included in ``z``.
    ``epsilon=0`` is LRP-0; larger ε absorbs weak or contradictory contributions.

    >>> Epsilon(1e-6)
    Epsilon(epsilon=1e-06)
    """

    epsilon: float = 1e-6
    uses_output = True

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        return x * layer.adjoint(r / stabilize(z, self.epsilon), layer.weight, input_shape)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015): positive contributions weighted by ``alpha``, negative ones by ``beta``,
    ``alpha - beta = 1`` so relevance is conserved. Positive contributions are ``x⁺w⁺`` and ``x⁻w⁻`` (bias ``b⁺``),
    negative ones ``x⁺w⁻`` and ``x⁻w⁺`` (bias ``b⁻``).

    >>> AlphaBeta(2, 1)
    AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-06)
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    uses_output = False

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise SettingError(f"alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.alpha - self.beta != 1:
            raise SettingError(
                f"alpha - beta must be 1 for relevance to be conserved, got alpha={self.alpha}, beta={self.beta}"
            )
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "beta", float(self.beta))

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        return _alpha_beta(layer, r, x, input_shape, self.alpha, self.beta, self.stabilizer)


@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z⁺ of deep Taylor decomposition (Montavon et al. 2017): only positive contributions count
    (``AlphaBeta(1, 0)``; for negative inputs, the mirrored ``x⁻w⁻``).

    >>> ZPlus()
    ZPlus(stabilizer=1e-06)
    """

    stabilizer: float = 1e-6
    uses_output = False

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        return _alpha_beta(layer, r, x, input_shape, 1.0, 0.0, self.stabilizer)


def _alpha_beta(
    layer: LinearLayer,
    r: torch.Tensor,
    x: torch.Tensor,
    input_shape: Sequence[int],
    alpha: float,
    beta: float,
    stabilizer: float,
) -> torch.Tensor:
    x_pos = x.clamp(min=0)
    x_neg = x.clamp(max=0) if _has_negative(x) else None
    weight_pos = layer.weight.clamp(min=0)
    # the mirrored weights only where something uses them (large dense layers make each copy costly)
    weight_neg = layer.weight.clamp(max=0) if x_neg is not None or beta else None

    def share(bias: torch.Tensor | None, w_pos: torch.Tensor, w_neg: torch.Tensor | None) -> torch.Tensor:
        # inputs of one sign times weights of one sign: x⁺ w_pos + x⁻ w_neg (+ the bias of that sign)
        denominator = layer.forward(x_pos, w_pos, bias)
        if x_neg is not None:
            denominator = denominator + layer.forward(x_neg, w_neg)
        s = r / stabilize(denominator, stabilizer)
        result = x_pos * layer.adjoint(s, w_pos, input_shape)
        if x_neg is not None:
            result = result + x_neg * layer.adjoint(s, w_neg, input_shape)
        return result

    result = share(_positive(layer.bias), weight_pos, weight_neg)
    if alpha != 1:
        result = alpha * result
    if beta:
        result = result - beta * share(_negative(layer.bias), weight_neg, weight_pos)
    return result


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ (Montavon et al. 2019, generalised to signed inputs as in Andéol et al. 2021 and Zennit): where
    ``z_j > 0`` the contributions ``x⁺(w + γw⁺)`` and ``x⁻(w + γw⁻)`` (bias ``b + γb⁺``) share its relevance,
    where ``z_j < 0`` the mirrored ones. ``gamma=0`` is LRP-0; large γ tends to z⁺.

    >>> Gamma(0.25)
    Gamma(gamma=0.25, stabilizer=1e-06)
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        gamma, weight, bias = self.gamma, layer.weight, layer.bias
        up = weight + gamma * weight.clamp(min=0)  # favors positive contributions
        down = weight + gamma * weight.clamp(max=0)  # favors negative contributions
        rising, falling = z > 0, z < 0
        if not _has_negative(x):
            # x >= 0: with p = x·w⁺ + b⁺ >= 0, the denominators are z + γp (z > 0) and (1 + γ)z - γp (z < 0),
            # sums of same-signed terms, so they need one forward pass and lose no precision.
            p = layer.forward(x, weight.clamp(min=0), _positive(bias))
            s_up = torch.where(rising, r / stabilize(z + gamma * p, self.stabilizer), 0.0)
            s_down = torch.where(falling, r / stabilize((1 + gamma) * z - gamma * p, self.stabilizer), 0.0)
            return x * (layer.adjoint(s_up, up, input_shape) + layer.adjoint(s_down, down, input_shape))
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        bias_up = None if bias is None else bias + gamma * bias.clamp(min=0)
        bias_down = None if bias is None else bias + gamma * bias.clamp(max=0)
        d_up = layer.forward(x_pos, up, bias_up) + layer.forward(x_neg, down)
        d_down = layer.forward(x_pos, down, bias_down) + layer.forward(x_neg, up)
        s_up = torch.where(rising, r / stabilize(d_up, self.stabilizer), 0.0)
        s_down = torch.where(falling, r / stabilize(d_down, self.stabilizer), 0.0)
        return x_pos * (
            layer.adjoint(s_up, up, input_shape) + layer.adjoint(s_down, down, input_shape)
        ) + x_neg * (layer.adjoint(s_up, down, input_shape) + layer.adjoint(s_down, up, input_shape))


def _ones_input(layer: LinearLayer, input_shape: Sequence[int], domain: InputDomain | None) -> torch.Tensor:
    """A stand-in input of ones: the denominators of flat and w-square do not depend on the input's values, so
    one sample is enough. Padding added in front of a first layer is not an input (zeros there, as for a
    convolution's own zero padding)."""
    if domain is not None:
        return domain.support[:1].to(layer.weight.dtype)
    return layer.weight.new_ones((1, *input_shape[1:]))


@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat (Lapuschkin et al. 2019): relevance spread uniformly over each output's receptive field,
    ignoring weights and input values (``w = 1``, no bias). Used for the first layer.

    >>> Flat()
    Flat(stabilizer=1e-06)
    """

    stabilizer: float = 1e-6
    uses_input = False
    uses_output = False

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        ones = torch.ones_like(layer.weight)
        counts = layer.forward(_ones_input(layer, input_shape, domain), ones)
        return layer.adjoint(r / stabilize(counts, self.stabilizer), ones, input_shape)


@dataclass(frozen=True)
class WSquare(Rule):
    """LRP-w² (Montavon et al. 2017): relevance spread in proportion to squared weights, ignoring the input
    (for a first layer whose input is unbounded). The bias is squared with the weights.

    >>> WSquare()
    WSquare(stabilizer=1e-06)
    """

    stabilizer: float = 1e-6
    uses_input = False
    uses_output = False

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        squared = layer.weight.square()
        bias = None if layer.bias is None else layer.bias.square()
        denominator = layer.forward(_ones_input(layer, input_shape, domain), squared, bias)
        return layer.adjoint(r / stabilize(denominator, self.stabilizer), squared, input_shape)


@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """LRP-z^B of deep Taylor decomposition (Montavon et al. 2017) for inputs known to lie in ``[low, high]``:
    ``R_i = Σ_j (x_i w_ij - l_i w⁺_ij - h_i w⁻_ij) R_j / Σ_i' (…)``. For the first layer.

    ``low``/``high`` are bounds of the layer's input (floats or tensors broadcastable to it). Left ``None``, the
    engine supplies the bounds of the model input (by default the [0, 1] pixel range passed through the model's
    normalization), carried through any padding or reshaping in front of the layer.

    >>> ZBox(low=-2.1, high=2.6)
    ZBox(low=-2.1, high=2.6, stabilizer=1e-06)
    """

    low: float | torch.Tensor | None = None
    high: float | torch.Tensor | None = None
    stabilizer: float = 1e-6
    needs_bounds = True

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise SettingError("give both low and high, or neither (to use the model input's bounds)")

    def relevance(self, layer, r, x, z, input_shape, domain=None):
        if self.low is not None:
            low, high = (
                _as_input_shaped(torch.as_tensor(bound, dtype=x.dtype, device=x.device), x).expand_as(x)
                for bound in (self.low, self.high)
            )
            if domain is not None:  # padding in front of the layer is fixed: its bounds are its value
                low = torch.where(domain.support > 0, low, x)
                high = torch.where(domain.support > 0, high, x)
        elif domain is None or domain.low is None:
            raise RelevanceError(
                f"ZBox at layer {layer.name!r} has no bounds: it does not take the model input directly, so give "
                "ZBox(low=..., high=...) for its input"
            )
        else:
            low, high = domain.low, domain.high
        weight_pos, weight_neg = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
        denominator = z - layer.forward(low, weight_pos, _positive(layer.bias))
        denominator = denominator - layer.forward(high, weight_neg, _negative(layer.bias))
        s = r / stabilize(denominator, self.stabilizer)
        # x·W - l·W⁺ - h·W⁻ with W = W⁺ + W⁻: two adjoint passes instead of three
        return (x - low) * layer.adjoint(s, weight_pos, input_shape) + (x - high) * layer.adjoint(
            s, weight_neg, input_shape
        )

    def __repr__(self) -> str:
        def show(value: object) -> str:
            return f"tensor{list(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)

        return f"ZBox(low={show(self.low)}, high={show(self.high)}, stabilizer={self.stabilizer})"


def _as_input_shaped(bound: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar, per-channel ``[C]`` or input-shaped bound, broadcastable against ``x``."""
    if bound.ndim == 1 and x.ndim > 2 and bound.numel() == x.shape[1]:
        return bound.view(1, -1, *([1] * (x.ndim - 2)))
    return bound
