import pytest
import torch

from cmvl.metrics.vqa_accuracy import ANSWER_TYPES, VQAAccuracy, answer_type_index


def test_overall_and_per_answer_type():
    metric = VQAAccuracy()
    metric.update(torch.tensor([1.0, 0.3]), torch.tensor([0, 1]))
    metric.update(torch.tensor([0.6, 0.9, 0.0]), torch.tensor([2, 2, -1]))
    result = metric.compute()
    assert result["acc"].item() == pytest.approx((1.0 + 0.3 + 0.6 + 0.9 + 0.0) / 5)
    assert result["acc_yes_no"].item() == pytest.approx(1.0)
    assert result["acc_number"].item() == pytest.approx(0.3)
    assert result["acc_other"].item() == pytest.approx(0.75)


def test_state_is_a_sum_so_split_batches_agree():
    scores = torch.rand(101)
    types = torch.randint(-1, 3, (101,))
    whole, parts = VQAAccuracy(), VQAAccuracy()
    whole.update(scores, types)
    for chunk in range(0, 101, 17):
        parts.update(scores[chunk : chunk + 17], types[chunk : chunk + 17])
    assert torch.allclose(whole.compute()["acc"], parts.compute()["acc"], atol=1e-12)


def test_answer_type_index():
    assert [answer_type_index(t) for t in ANSWER_TYPES] == [0, 1, 2]
    assert answer_type_index(None) == -1 and answer_type_index("weird") == -1
