"""What `deepscope models`, `methods` and `metrics` print, kept in catalog.json so that they answer without
importing torch (which costs seconds). The listings are made from the live registries by :func:`listings`;
tests/test_cli.py checks the stored file equals them, and ``python -m deepscope.app.catalog`` rewrites it."""

from __future__ import annotations

import json
from pathlib import Path

CATALOG = Path(__file__).with_name("catalog.json")


def stored(kind: str) -> str:
    """The stored listing of ``kind`` ('models', 'methods' or 'metrics')."""
    return json.loads(CATALOG.read_text())[kind]


def listings() -> dict[str, str]:
    """Each listing made from the registries themselves (imports torch)."""
    return {"models": _models(), "methods": _methods(), "metrics": _metrics()}


def _models() -> str:
    from deepscope.zoo.loaders import SCHEMES, list_models

    lines = ["Bundled (offline):"]
    lines += [f"  {spec:26s} {description}" for spec, description in list_models().items()]
    lines += [
        "",
        "Schemes: " + ", ".join(f"{scheme}:" for scheme in SCHEMES),
        "  torchvision:NAME          weights from the local torch hub cache (?weights=none: random init)",
        "  timm:NAME                 ?weights=none or ?checkpoint=PATH (needs timm)",
        "  torchscript:PATH          a saved TorchScript archive",
        "  python:pkg.module:factory a function returning a torch.nn.Module",
    ]
    return "\n".join(lines)


def _methods() -> str:
    from deepscope.attribution.base import methods

    lines = []
    for info in methods():
        lines.append(f"{info.name:30s} {info.family:13s} {info.passes}")
        lines.append(f"{'':30s} {info.reference}")
        if info.options:
            lines.append(f"{'':30s} options: {'; '.join(str(option) for option in info.options)}")
    return "\n".join(lines)


def _metrics() -> str:
    from deepscope.metrics.registry import metrics

    lines = []
    for info in metrics():
        needs = [
            need
            for need, needed in (
                ("recomputes maps with the method", info.needs_method),
                ("needs object masks or boxes: ds.evaluate(masks=...)", info.needs_objects),
            )
            if needed
        ]
        better = "higher" if info.higher_is_better else "lower"
        lines.append(f"{info.name:20s} {info.family:13s} {better:7s}{info.score}")
        lines.append(f"{'':20s} {info.reference}{''.join('; ' + need for need in needs)}")
    return "\n".join(lines)


if __name__ == "__main__":
    CATALOG.write_text(json.dumps(listings(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {CATALOG}")
