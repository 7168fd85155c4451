"""The loss and metric contract: built-ins against torch, layouts, per-sample shape errors,
resolution of specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workers.errors import LossError, MetricError
from workers.loss import cross_entropy, mse, resolve_loss
from workers.metric import accuracy, resolve_metric
from workers.objective import resolve_objective, score_name


def batch_mean_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A common mistake: the batch is averaged away."""
    return F.mse_loss(outputs, targets)


def per_sample_l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs - targets).abs().reshape(outputs.shape[0], -1).mean(dim=1)


NOT_CALLABLE = 3


def test_cross_entropy_per_sample_matches_torch_in_every_layout() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 7, generator=gen), torch.randint(0, 7, (5,), generator=gen)
    torch.testing.assert_close(cross_entropy(logits, labels),
                               F.cross_entropy(logits, labels, reduction="none"))
    lm = torch.randn(4, 6, 11, generator=gen)  # (b, T, V)
    tokens = torch.randint(0, 11, (4, 6), generator=gen)
    per_token = F.cross_entropy(lm.reshape(-1, 11), tokens.reshape(-1), reduction="none")
    torch.testing.assert_close(cross_entropy(lm, tokens), per_token.reshape(4, 6).mean(dim=1))
    seg = torch.randn(3, 5, 4, 2, generator=gen)  # (b, C, H, W), torch's layout
    masks = torch.randint(0, 5, (3, 4, 2), generator=gen)
    torch.testing.assert_close(
        cross_entropy(seg, masks),
        F.cross_entropy(seg, masks, reduction="none").reshape(3, -1).mean(dim=1))
    # the per-sample mean over tokens sums to the token-mean loss times the batch
    torch.testing.assert_close(cross_entropy(lm, tokens).sum() / 4,
                               F.cross_entropy(lm.reshape(-1, 11), tokens.reshape(-1)))


def test_summed_cross_entropy_is_torchs_sum_reduction_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    spec = resolve_loss("cross_entropy")
    for _ in range(20):
        logits = torch.randn(37, 10, generator=gen)
        labels = torch.randint(0, 10, (37,), generator=gen)
        assert torch.equal(spec.summed(logits, labels),
                           F.cross_entropy(logits, labels, reduction="sum"))


def test_mse_is_the_per_sample_mean_over_values() -> None:
    gen = torch.Generator().manual_seed(2)
    out, target = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    torch.testing.assert_close(mse(out, target),
                               F.mse_loss(out, target, reduction="none").mean(dim=1))
    torch.testing.assert_close(mse(out, target).mean(), F.mse_loss(out, target))
    scalar_out, scalar_y = torch.randn(6, 1, generator=gen), torch.randn(6, generator=gen)
    torch.testing.assert_close(mse(scalar_out, scalar_y), (scalar_out[:, 0] - scalar_y) ** 2)
    counts = torch.tensor([1, 2, 3])  # integer targets are compared as the outputs' floats
    torch.testing.assert_close(mse(torch.zeros(3), counts), torch.tensor([1.0, 4.0, 9.0]))
    with pytest.raises(LossError, match=r"mse needs outputs of the targets' shape .*\(6, 2\)"):
        mse(torch.randn(6, 2), torch.randn(6))  # would broadcast to (6, 6) silently


def test_accuracy_counts_hits_per_sample_and_per_position() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    torch.testing.assert_close(accuracy(logits, torch.tensor([0, 1, 1])),
                               torch.tensor([1.0, 1.0, 0.0]))
    lm = torch.zeros(2, 4, 3)
    lm[:, :, 2] = 1.0  # always predicts token 2
    tokens = torch.tensor([[2, 2, 0, 1], [2, 2, 2, 2]])
    torch.testing.assert_close(accuracy(lm, tokens), torch.tensor([0.5, 1.0]))
    assert resolve_metric("accuracy").summed(logits, torch.tensor([0, 1, 1])) == 2.0
    assert resolve_metric("none").summed(logits, torch.tensor([0, 1, 1])) == 0.0


def test_class_ids_out_of_range_or_float_are_typed_errors() -> None:
    logits = torch.randn(3, 4)
    with pytest.raises(LossError, match=r"got target 4, .* 0 <= y < 4"):
        cross_entropy(logits, torch.tensor([0, 1, 4]))
    with pytest.raises(LossError, match="got target -1"):
        resolve_loss("cross_entropy").summed(logits, torch.tensor([0, -1, 2]))
    with pytest.raises(LossError, match=r"integer class ids .*float32.*--loss mse"):
        cross_entropy(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(MetricError, match="got target 9"):
        accuracy(logits, torch.tensor([9, 0, 0]))
    with pytest.raises(LossError, match=r"\(batch, classes\).*got outputs \(3,\)"):
        cross_entropy(torch.randn(3), torch.tensor([0, 1, 2]))


def test_a_loss_without_one_value_per_sample_is_named_with_the_expected_shape() -> None:
    spec = resolve_loss(f"{__name__}:batch_mean_loss")
    out, target = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(LossError, match=r"loss .*batch_mean_loss returned shape \(\) for a "
                                        r"micro-batch of 4 samples; .* shape \(4,\)"):
        spec.summed(out, target)
    good = resolve_loss(f"{__name__}:per_sample_l1")
    torch.testing.assert_close(good.summed(out, target), (out - target).abs().mean(1).sum())
    with pytest.raises(MetricError, match=r"metric .* shape \(4, 2\) .* shape \(4,\)"):
        resolve_metric(lambda o, t: o).per_sample(out, target)


def test_specs_resolve_or_fail_in_one_line() -> None:
    assert resolve_loss("mse").fn is mse
    assert resolve_loss(per_sample_l1).fn is per_sample_l1
    with pytest.raises(LossError, match="unknown loss 'hinge': use one of cross_entropy, mse"):
        resolve_loss("hinge")
    with pytest.raises(LossError, match=r"cannot import module 'no_such_pkg\.mod' of loss"):
        resolve_loss("no_such_pkg.mod:fn")
    with pytest.raises(LossError, match="has no loss named 'missing'"):
        resolve_loss(f"{__name__}:missing")
    with pytest.raises(LossError, match="is not callable"):
        resolve_loss(f"{__name__}:NOT_CALLABLE")
    with pytest.raises(MetricError, match="unknown metric 'f1'"):
        resolve_metric("f1")


def test_the_metric_defaults_by_the_loss() -> None:
    assert resolve_objective().metric.name == "accuracy"
    assert resolve_objective("mse").metric.fn is None
    assert resolve_objective("mse", "accuracy").metric.fn is accuracy
    assert [score_name("cross_entropy", None), score_name("mse", None),
            score_name("cross_entropy", "none"), score_name("mse", "pkg.m:mae")] == [
        "accuracy", "loss", "loss", "pkg.m:mae"]
    assert resolve_objective("mse").score_name == "loss"
