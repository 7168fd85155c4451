"""Built-in models, factory resolution and the factory contract (seeded, named tensors)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from workers import gradient
from workers.errors import ModelFactoryError
from workers.gradient import TaskSpec
from workers.models import build_model, callable_key, initial_parameters, resolve_model


def tiny_factory() -> torch.nn.Module:
    return torch.nn.Linear(4, 3)


def not_a_module() -> object:
    return 42


def test_mlp_is_sized_from_data_with_hidden_256_and_128() -> None:
    model = build_model(resolve_model("mlp", in_features=20, num_classes=5), seed=0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(256, 20), (256,), (128, 256), (128,), (5, 128), (5,)]
    assert model(torch.zeros(3, 20)).shape == (3, 5)


def test_cnn_maps_flat_8x8_rows_to_logits_and_rejects_non_square() -> None:
    model = build_model(resolve_model("cnn", in_features=64, num_classes=10), seed=0)
    assert model(torch.zeros(2, 64)).shape == (2, 10)
    with pytest.raises(ModelFactoryError, match="square"):
        resolve_model("cnn", in_features=20, num_classes=10)


def test_same_seed_builds_identical_parameters_different_seed_does_not() -> None:
    spec = resolve_model("mlp", in_features=8, num_classes=3)
    a = initial_parameters(build_model(spec, seed=3))
    b = initial_parameters(build_model(spec, seed=3))
    c = initial_parameters(build_model(spec, seed=4))
    assert all(torch.equal(torch.from_numpy(a[k]), torch.from_numpy(b[k])) for k in a)
    assert any(not torch.equal(torch.from_numpy(a[k]), torch.from_numpy(c[k])) for k in a)
    assert list(a) == [n for n, _ in build_model(spec, seed=3).named_parameters()]


def test_package_module_factory_spec_resolves_to_the_callable() -> None:
    spec = resolve_model(f"{__name__}:tiny_factory", in_features=4, num_classes=3)
    assert spec.key.startswith(f"{__name__}:tiny_factory#")
    assert isinstance(build_model(spec, seed=0), torch.nn.Linear)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("resnet", "unknown model"), ("no_such_module_xyz:f", "cannot import"),
     (f"{__name__}:missing", "has no model factory"), (":f", "must be")],
)
def test_bad_model_specs_raise_clear_errors(spec: str, match: str) -> None:
    with pytest.raises(ModelFactoryError, match=match):
        resolve_model(spec, in_features=4, num_classes=3)


def test_factory_returning_a_non_module_is_rejected() -> None:
    spec = resolve_model(not_a_module, in_features=4, num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(ModelFactoryError, match=r"not torch\.nn\.Module"):
        build_model(spec, seed=0)


def _notebook_cell(source: str) -> Callable[..., torch.nn.Module]:
    """``make_model`` as a notebook defines it: a function of ``__main__``, which Ray's
    cloudpickle ships by value."""
    namespace: dict[str, Any] = {"__name__": "__main__", "nn": torch.nn}
    exec(source, namespace)
    factory: Callable[..., torch.nn.Module] = namespace["make_model"]
    return factory


def test_a_redefined_factory_is_not_served_from_a_workers_model_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A notebook cell run again defines a new ``__main__.make_model``: same module and
    qualname, another architecture. A worker process must build the new one."""
    monkeypatch.setattr(gradient, "_MODELS", {})
    old = _notebook_cell("def make_model():\n    return nn.Linear(4, 3)\n")
    new = _notebook_cell("def make_model():\n    return nn.Linear(4, 5)\n")
    assert callable_key(old) == callable_key(new) == "__main__:make_model"
    old_spec = resolve_model(old, in_features=4, num_classes=3)
    new_spec = resolve_model(new, in_features=4, num_classes=3)
    assert old_spec.key != new_spec.key
    assert gradient.cached_model(TaskSpec(model=old_spec, seed=0, layout=())).out_features == 3
    rebuilt = gradient.cached_model(TaskSpec(model=new_spec, seed=0, layout=()))
    assert rebuilt.out_features == 5
    again = resolve_model(new, in_features=4, num_classes=3)
    assert again.key == new_spec.key  # the same object keeps its key: the cache still works


def wide_factory(width: int = 3, bias: bool = True) -> torch.nn.Module:
    return torch.nn.Linear(4, width, bias=bias)


def test_model_kwargs_are_bound_and_part_of_the_cache_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gradient, "_MODELS", {})
    narrow = resolve_model(wide_factory, in_features=4, num_classes=3,
                           model_kwargs={"width": 3})
    wide = resolve_model(f"{__name__}:wide_factory", in_features=4, num_classes=3,
                         model_kwargs={"width": 7, "bias": False})
    assert narrow.key != wide.key and '"width": 7' in wide.key
    assert build_model(wide, seed=0).weight.shape == (7, 4)
    assert gradient.cached_model(TaskSpec(model=narrow, seed=0, layout=())).out_features == 3
    cached = gradient.cached_model(TaskSpec(model=wide, seed=0, layout=()))
    assert cached.out_features == 7 and cached.bias is None


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [(wide_factory, {"depth": 2}, r"cannot be called with the model arguments given "
      r"\(depth=2\).*unexpected keyword argument 'depth'.*--model-arg"),
     (f"{__name__}:wide_factory", {"depth": 2}, "its signature is"),
     ("mlp", {"width": 3}, "built-in model 'mlp' takes no model arguments")],
)
def test_model_kwargs_the_factory_does_not_take_are_refused(
    spec: Any, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ModelFactoryError, match=match):
        resolve_model(spec, in_features=4, num_classes=3, model_kwargs=kwargs)


def test_a_factory_that_cannot_be_pickled_is_named_before_anything_runs() -> None:
    lock = threading.Lock()

    def make_model() -> torch.nn.Module:
        with lock:
            return torch.nn.Linear(4, 3)

    with pytest.raises(ModelFactoryError, match=r"cannot be pickled to send to the workers"):
        resolve_model(make_model, in_features=4, num_classes=3)
