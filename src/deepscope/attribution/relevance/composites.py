"""The registered LRP methods: named composites, each with the meaning of Zennit's composite of the same name.

=================================  ===================  ====================  =================================
method                             convolutions         dense layers          first layer (takes the input)
=================================  ===================  ====================  =================================
``lrp_epsilon``                    epsilon              epsilon               (as the others)
``lrp_zplus``                      z+                   z+                    (as the others)
``lrp_epsilon_plus``               z+                   epsilon               (as the others)
``lrp_epsilon_plus_flat``          z+                   epsilon               flat
``lrp_epsilon_alpha2_beta1``       alpha=2, beta=1      epsilon               (as the others)
``lrp_epsilon_alpha2_beta1_flat``  alpha=2, beta=1      epsilon               flat
``lrp_epsilon_gamma_box``          gamma=0.25           epsilon               z-box (bounds of the input)
=================================  ===================  ====================  =================================

All share Zennit's base map: activations and unfolded batch norms pass relevance through, sums and average
pooling divide it in proportion to their inputs (stabilized by ``stabilizer``), batch norms after a linear layer
are folded into it. Defaults are Zennit's: ``epsilon=1e-6``, ``stabilizer=1e-6``, ``gamma=0.25``. Zennit has no
composite named ``epsilon`` or ``zplus``; ``lrp_epsilon`` and ``lrp_zplus`` are the base map with one rule for every
linear layer. One difference: where a model's first layer is a dense layer, ``lrp_epsilon_gamma_box`` gives it the
z-box rule (Zennit's gives z-box only to the first convolution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from deepscope.attribution.base import Attribution, MethodError, register
from deepscope.attribution.relevance.engine import Composite, LayerRule, propagate, trace_rules
from deepscope.attribution.relevance.rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, ZBox, ZPlus
from deepscope.attribution.targets import TargetLike
from deepscope.probe.layers import find_layers

_PASSES = "1 forward + 1 backward"
_BACH = "Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by LRP"
_MONTAVON = (
    "Montavon et al. 2017, Explaining nonlinear classification decisions with deep Taylor decomposition"
)
_KOHLBRENNER = (
    "Kohlbrenner et al. 2020, Towards best practice in explaining neural network decisions with LRP"
)


class LRP(Attribution):
    """Base of the registered LRP composites: one forward and one backward pass with the composite's rules.

    Options (all optional): ``epsilon`` (dense layers, and every layer of ``lrp_epsilon``), ``stabilizer`` (the
    ε of the other rules, sums and average pooling), ``gamma`` and ``low``/``high`` (the input bounds of z-box)
    where the composite has them, and ``layers``: a mapping from layer names or globs to rules that override the
    composite (``{"features.0": ZBox(-1.0, 1.0)}``). Returns signed ``[B,C,H,W]`` relevance, raw.
    :meth:`rules` shows which rule each layer gets and which batch norm is folded into it:

    >>> import torch, deepscope as ds
    >>> method = LRPEpsilonGammaBox(ds.load_model("zoo:efficientnet_lite0"))
    >>> stem = method.rules(torch.zeros(1, 3, 224, 224))[0]
    >>> stem.layer, stem.rule, stem.batch_norm
    ('_conv_stem', ZBox(low=None, high=None, stabilizer=1e-06), '_bn0')
    """

    @dataclass(frozen=True, eq=False)
    class Options(Attribution.Options):
        stabilizer: float = 1e-6
        layers: Mapping[str, Rule] | None = None

        def check(self) -> None:
            # relevance is divided by stabilized sums of contributions; a stabilizer of 0 divides by zero where
            # a layer's contributions cancel, and the map fills with NaN
            if not self.stabilizer > 0:
                raise MethodError(
                    f"stabilizer must be > 0 (it keeps divisions by zero away), got {self.stabilizer!r}"
                )

    def build(self) -> Composite:
        """The composite's rules for this method's options (the step each registered composite defines)."""
        raise NotImplementedError

    def bounds(self) -> tuple[Any, Any]:
        """The input bounds ``(low, high)`` of z-box rules; ``(None, None)``: the model's normalization."""
        return None, None

    def composite(self) -> Composite:
        """:meth:`build` with the ``layers`` overrides, whose names are checked against the model."""
        overrides = self.options.layers or {}
        for pattern in overrides:
            find_layers(self.vm, pattern)  # a name that matches nothing raises, with suggestions
        composite = self.build()
        return replace(composite, layers=dict(overrides)) if overrides else composite

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        low, high = self.bounds()
        relevance, _ = propagate(
            self.vm, inputs, self.composite(), target, low=low, high=high, batch_size=self.batch_size
        )
        return relevance

    def rules(self, inputs: torch.Tensor) -> list[LayerRule]:
        """Which rule each convolution / dense layer call gets for inputs like ``inputs`` (forward pass only)."""
        return trace_rules(self.vm, self.vm.check_inputs(inputs), self.composite())


@dataclass(frozen=True, eq=False)
class EpsilonOptions(LRP.Options):
    """The options of the composites with an ε rule."""

    epsilon: float = 1e-6


@register(
    "lrp_epsilon", family="relevance", space="pixel", passes=_PASSES, reference=_BACH + "; LRP-ε everywhere"
)
class LRPEpsilon(LRP):
    """LRP-ε on every convolution and dense layer (Bach et al. 2015).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k().images[:2])
    >>> relevance = ds.attribute(vm, x, "lrp_epsilon")
    >>> relevance.shape, torch.allclose(relevance.sum((1, 2, 3)), vm(x).max(1).values, rtol=0.2)
    (torch.Size([2, 1, 28, 28]), True)
    """

    Options = EpsilonOptions

    def build(self) -> Composite:
        epsilon, stabilizer = self.options.epsilon, self.options.stabilizer
        return Composite(conv=Epsilon(epsilon), linear=Epsilon(epsilon), stabilizer=stabilizer)


@register(
    "lrp_zplus", family="relevance", space="pixel", passes=_PASSES, reference=_MONTAVON + "; z+ everywhere"
)
class LRPZPlus(LRP):
    """The z⁺ rule of deep Taylor decomposition on every convolution and dense layer (Montavon et al. 2017).

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, vm.preprocess(ds.datasets.mnist5k().images[:1]), "lrp_zplus").shape
    torch.Size([1, 1, 28, 28])
    """

    def build(self) -> Composite:
        stabilizer = self.options.stabilizer
        return Composite(conv=ZPlus(stabilizer), linear=ZPlus(stabilizer), stabilizer=stabilizer)


@register(
    "lrp_epsilon_plus",
    family="relevance",
    space="pixel",
    passes=_PASSES,
    reference=_KOHLBRENNER + "; Zennit's EpsilonPlus: z+ for convolutions, ε for dense layers",
)
class LRPEpsilonPlus(LRP):
    """z⁺ for convolutions, ε for dense layers (Zennit's ``EpsilonPlus``; Kohlbrenner et al. 2020).

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, vm.preprocess(ds.datasets.mnist5k().images[:1]), "lrp_epsilon_plus").shape
    torch.Size([1, 1, 28, 28])
    """

    Options = EpsilonOptions

    def build(self) -> Composite:
        epsilon, stabilizer = self.options.epsilon, self.options.stabilizer
        return Composite(conv=ZPlus(stabilizer), linear=Epsilon(epsilon), stabilizer=stabilizer)


@register(
    "lrp_epsilon_plus_flat",
    family="relevance",
    space="pixel",
    passes=_PASSES,
    reference=_KOHLBRENNER + "; Zennit's EpsilonPlusFlat: flat first layer, z+ convolutions, ε dense layers",
)
class LRPEpsilonPlusFlat(LRP):
    """Flat rule for the first layer, z⁺ for the other convolutions, ε for dense layers (Zennit's
    ``EpsilonPlusFlat``; Kohlbrenner et al. 2020).

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, vm.preprocess(ds.datasets.mnist5k().images[:1]), "lrp_epsilon_plus_flat").shape
    torch.Size([1, 1, 28, 28])
    """

    Options = EpsilonOptions

    def build(self) -> Composite:
        epsilon, stabilizer = self.options.epsilon, self.options.stabilizer
        return Composite(
            conv=ZPlus(stabilizer), linear=Epsilon(epsilon), first=Flat(stabilizer), stabilizer=stabilizer
        )


@register(
    "lrp_epsilon_alpha2_beta1",
    family="relevance",
    space="pixel",
    passes=_PASSES,
    reference=_BACH + "; Zennit's EpsilonAlpha2Beta1: α2β1 convolutions, ε dense layers",
)
class LRPEpsilonAlpha2Beta1(LRP):
    """α=2, β=1 for convolutions, ε for dense layers (Zennit's ``EpsilonAlpha2Beta1``; Bach et al. 2015).

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, vm.preprocess(ds.datasets.mnist5k().images[:1]), "lrp_epsilon_alpha2_beta1").shape
    torch.Size([1, 1, 28, 28])
    """

    Options = EpsilonOptions

    def build(self) -> Composite:
        epsilon, stabilizer = self.options.epsilon, self.options.stabilizer
        return Composite(conv=AlphaBeta(2, 1, stabilizer), linear=Epsilon(epsilon), stabilizer=stabilizer)


@register(
    "lrp_epsilon_alpha2_beta1_flat",
    family="relevance",
    space="pixel",
    passes=_PASSES,
    reference=_BACH
    + "; Zennit's EpsilonAlpha2Beta1Flat: flat first layer, α2β1 convolutions, ε dense layers",
)
class LRPEpsilonAlpha2Beta1Flat(LRP):
    """Flat rule for the first layer, α=2, β=1 for the other convolutions, ε for dense layers (Zennit's
    ``EpsilonAlpha2Beta1Flat``).

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, vm.preprocess(ds.datasets.mnist5k().images[:1]), "lrp_epsilon_alpha2_beta1_flat").shape
    torch.Size([1, 1, 28, 28])
    """

    Options = EpsilonOptions

    def build(self) -> Composite:
        epsilon, stabilizer = self.options.epsilon, self.options.stabilizer
        return Composite(
            conv=AlphaBeta(2, 1, stabilizer),
            linear=Epsilon(epsilon),
            first=Flat(stabilizer),
            stabilizer=stabilizer,
        )


@register(
    "lrp_epsilon_gamma_box",
    family="relevance",
    space="pixel",
    passes=_PASSES,
    reference=_MONTAVON + "; Zennit's EpsilonGammaBox: z-box first layer, γ convolutions, ε dense layers",
)
class LRPEpsilonGammaBox(LRP):
    """z-box for the first layer, γ for the other convolutions, ε for dense layers (Zennit's ``EpsilonGammaBox``;
    Montavon et al. 2017 and 2019). The z-box bounds default to the pixel range [0, 1] through the model's
    normalization; ``low``/``high`` (floats, per-channel values or input-shaped tensors) override them.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, vm.preprocess(ds.datasets.mnist5k().images[:1]), "lrp_epsilon_gamma_box").shape
    torch.Size([1, 1, 28, 28])
    """

    @dataclass(frozen=True, eq=False)
    class Options(EpsilonOptions):
        gamma: float = 0.25
        low: float | Sequence[float] | torch.Tensor | None = None
        high: float | Sequence[float] | torch.Tensor | None = None

        def check(self) -> None:
            super().check()
            if (self.low is None) != (self.high is None):
                raise MethodError("give both low and high, or neither (to use the model's normalization)")

    def build(self) -> Composite:
        options = self.options
        return Composite(
            conv=Gamma(options.gamma, options.stabilizer),
            linear=Epsilon(options.epsilon),
            first=ZBox(stabilizer=options.stabilizer),
            stabilizer=options.stabilizer,
        )

    def bounds(self) -> tuple[Any, Any]:
        return self.options.low, self.options.high
