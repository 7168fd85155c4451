"""Built-in models, factory resolution and the factory contract (seeded, named tensors)."""

from __future__ import annotations

import pytest
import torch

from workers.errors import ModelFactoryError
from workers.models import build_model, initial_parameters, resolve_model


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
    assert spec.key == f"{__name__}:tiny_factory"
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
