"""Heat maps: one family per module, one class per method, a registry, ``attribute()`` and ``explain()``."""

from deepscope.attribution import relevance, targets
from deepscope.attribution.base import (
    Attribution,
    Method,
    MethodError,
    MethodInfo,
    OptionInfo,
    Options,
    PassCount,
    attribute,
    method,
    method_info,
    methods,
    parse_methods,
    register,
)
from deepscope.attribution.cam import CAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, LayerCAM, ScoreCAM
from deepscope.attribution.explain import Explanation, explain
from deepscope.attribution.gradient import (
    Deconvnet,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
)
from deepscope.attribution.layers import default_layer
from deepscope.attribution.perturbation import RISE, Occlusion, PredictionDifference
from deepscope.attribution.transformer import AttentionRollout

__all__ = [
    "CAM",
    "RISE",
    "AttentionRollout",
    "Attribution",
    "Deconvnet",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "Method",
    "MethodError",
    "MethodInfo",
    "Occlusion",
    "OptionInfo",
    "Options",
    "PassCount",
    "PredictionDifference",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "attribute",
    "default_layer",
    "explain",
    "method",
    "method_info",
    "methods",
    "parse_methods",
    "register",
    "relevance",
    "targets",
]
