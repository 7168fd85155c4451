"""Model building: built-in models and resolution of ``package.module:factory`` specs.

Contract (docs/DESIGN.md): a factory is ``factory(**model_kwargs) -> torch.nn.Module``,
called right after ``torch.manual_seed(seed)``; tensor names are the module's
``state_dict()`` keys. Built-ins are sized from the data and take no keyword arguments:
``mlp`` (hidden 256 and 128) and ``cnn`` (8×8 images, i.e. 64 features, as in
scikit-learn's digits).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.errors import ModelFactoryError
from workers.spec_import import import_spec_attr

ModelFactory = Callable[..., nn.Module]
ModelArgs = Mapping[str, object]
BUILTIN_MODELS = ("mlp", "cnn")


def build_mlp(in_features: int, num_classes: int) -> nn.Module:
    """A two-hidden-layer perceptron: in → 256 → 128 → classes, ReLU between."""
    return nn.Sequential(
        nn.Linear(in_features, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class SmallCNN(nn.Module):
    """A small CNN for square single-channel images given as flat feature rows (8×8 digits)."""

    def __init__(self, side: int, num_classes: int) -> None:
        super().__init__()
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        pooled = side // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * pooled * pooled, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, side*side)`` rows to ``(batch, classes)`` logits."""
        images = x.reshape(x.shape[0], 1, self.side, self.side)
        out: torch.Tensor = self.head(self.features(images))
        return out


def build_cnn(in_features: int, num_classes: int) -> nn.Module:
    """The built-in CNN; needs a square number of features of side >= 2 (digits: 64 = 8×8)."""
    side = math.isqrt(in_features)
    if side * side != in_features or side < 2:
        raise ModelFactoryError(
            f"model 'cnn' needs square images (features = side*side, side >= 2), got "
            f"{in_features} features; use --model mlp for non-image data"
        )
    return SmallCNN(side, num_classes)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A resolved model: the zero-argument factory (the keyword arguments bound) plus a key
    for per-process caches.

    ``key`` identifies what the factory builds (``model_key``): a built-in name with its
    sizes, or a user factory's ``module:qualname``, a digest of the factory object itself
    and its keyword arguments. Two specs with equal keys build the same module, so a worker
    process never reuses a model of a factory that was redefined since (a notebook cell run
    again) or called with other arguments.
    """

    factory: ModelFactory
    key: str


def callable_key(fn: Callable[..., object]) -> str:
    """A process-independent key for a callable: ``module:qualname`` (plus args of a partial)."""
    if isinstance(fn, functools.partial):
        return f"{callable_key(fn.func)}{fn.args!r}{sorted(fn.keywords.items())!r}"
    module = getattr(fn, "__module__", "?")
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    return f"{module}:{name}"


def factory_digest(fn: Callable[..., object]) -> str:
    """A digest of the factory object: SHA-256 of its bytes under Ray's own cloudpickle
    (what Ray ships to the workers). A function defined in ``__main__`` (a script, a
    notebook) is pickled by value, code and referenced globals included, so redefining it
    changes the digest; an importable function is pickled by its name. Raises
    ``ModelFactoryError`` when the factory cannot be pickled (the workers could not receive
    it either)."""
    from ray import cloudpickle

    try:
        data: bytes = cloudpickle.dumps(fn)  # type: ignore[no-untyped-call]
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise ModelFactoryError(
            f"model factory {callable_key(fn)} cannot be pickled to send to the workers: "
            f"{type(exc).__name__}: {detail}; define it at module level, or drop the object "
            "it refers to that cannot be pickled") from exc
    return hashlib.sha256(data).hexdigest()[:16]


def model_key(fn: Callable[..., object], model_kwargs: ModelArgs) -> str:
    """The cache key of ``fn(**model_kwargs)``: ``module:qualname#digest`` plus the keyword
    arguments as canonical JSON when there are any (see ``ModelSpec``)."""
    key = f"{callable_key(fn)}#{factory_digest(fn)}"
    if not model_kwargs:
        return key
    return key + json.dumps(dict(model_kwargs), sort_keys=True, default=repr)


def check_model_args(fn: Callable[..., object], model_kwargs: ModelArgs, name: str) -> None:
    """Raise ``ModelFactoryError`` unless ``fn`` can be called with exactly ``model_kwargs``
    (its signature binds them; a callable without a readable signature is not checked).
    ``name`` names the factory in the message."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**model_kwargs)
    except TypeError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items()) or "none"
        raise ModelFactoryError(
            f"model factory {name} cannot be called with the model arguments given ({given}): "
            f"{exc}; its signature is {signature}: pass its keywords with --model-arg "
            "KEY=VALUE (TrainConfig.model_kwargs)") from None


def resolve_model(
    spec: str | ModelFactory, *, in_features: int, num_classes: int,
    model_kwargs: ModelArgs | None = None,
) -> ModelSpec:
    """Turn ``mlp``/``cnn``/``pkg.mod:factory`` or a callable, with its keyword arguments,
    into a ``ModelSpec`` whose factory takes none (they are bound).

    Raises ``ModelFactoryError`` for unknown names, failed imports, non-callables, keyword
    arguments the factory does not take (the built-ins take none) and built-ins that do not
    fit the data's shape. Builds nothing except to check a built-in fits.
    """
    if in_features < 1 or num_classes < 1:
        raise ModelFactoryError(
            f"data must have >= 1 feature and >= 1 output, got {in_features} and {num_classes}"
        )
    kwargs = dict(model_kwargs or {})
    if callable(spec):
        check_model_args(spec, kwargs, callable_key(spec))
        user_factory: ModelFactory | None = spec
    else:
        user_factory = check_model_spec(spec, kwargs)
    if user_factory is not None:
        factory = functools.partial(user_factory, **kwargs) if kwargs else user_factory
        return ModelSpec(factory=factory, key=model_key(user_factory, kwargs))
    builder = build_mlp if spec == "mlp" else build_cnn
    if spec == "cnn":
        build_cnn(in_features, num_classes)  # fail fast on a shape mismatch
    built_in = functools.partial(builder, in_features, num_classes)
    return ModelSpec(factory=built_in, key=f"{spec}:{in_features}x{num_classes}")


def check_model_spec(spec: str, model_kwargs: ModelArgs | None = None) -> ModelFactory | None:
    """Check that ``spec`` names a model that takes ``model_kwargs``, without knowing the
    data: None for a built-in name, else the imported user factory. Raises
    ``ModelFactoryError`` for an unknown name, a failed import, a non-callable or keyword
    arguments it does not take. Imports the factory's module; builds nothing."""
    if spec in BUILTIN_MODELS:
        if model_kwargs:
            raise ModelFactoryError(
                f"the built-in model {spec!r} takes no model arguments (got "
                f"{', '.join(sorted(model_kwargs))}); drop --model-arg, or use a "
                "package.module:factory that takes them")
        return None
    if ":" not in spec:
        raise ModelFactoryError(
            f"unknown model {spec!r}: use one of {', '.join(BUILTIN_MODELS)} "
            "or 'package.module:factory'"
        )
    fn = import_spec_attr(spec, "model factory", ModelFactoryError)
    if not callable(fn):
        raise ModelFactoryError(f"model factory {spec!r} is not callable")
    check_model_args(fn, model_kwargs or {}, repr(spec))
    return fn


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """Call the factory right after ``torch.manual_seed(seed)``; check it is a float module."""
    torch.manual_seed(seed)
    model = spec.factory()
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"model factory {spec.key!r} returned {type(model).__name__}, not torch.nn.Module"
        )
    params = list(model.named_parameters())
    if not params:
        raise ModelFactoryError(f"model {spec.key!r} has no parameters to train")
    for name, p in params:
        if not p.is_floating_point():
            raise ModelFactoryError(f"parameter {name!r} of model {spec.key!r} is not float")
    return model


def initial_parameters(model: nn.Module) -> dict[str, np.ndarray]:
    """The trainable parameters as float32 numpy arrays, keyed by ``state_dict`` name (copies)."""
    return {
        name: p.detach().to(torch.float32).cpu().numpy().copy()
        for name, p in model.named_parameters()
    }
