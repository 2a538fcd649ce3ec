"""Heat maps: one family per module, one class per method, a registry, and ``attribute()``."""

from deepscope.attribution import relevance, targets
from deepscope.attribution.base import (
    Attribution,
    MethodError,
    MethodInfo,
    attribute,
    method_info,
    methods,
    register,
)

__all__ = [
    "Attribution",
    "MethodError",
    "MethodInfo",
    "attribute",
    "method_info",
    "methods",
    "register",
    "relevance",
    "targets",
]
