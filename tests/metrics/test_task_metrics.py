"""Fidelity of the task metrics against reference implementations (pycocoevalcap, sklearn, torchvision,
brute force)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cmvl.metrics.caption import CaptionScores, _fallback_tokenize, caption_scores, java_available, tokenize
from cmvl.metrics.grounding import GroundingAccuracy, paired_box_iou
from cmvl.metrics.retrieval import RetrievalRecall, embedding_ranking
from cmvl.metrics.tagging import TaggingMetrics
from cmvl.models.tokens import Tokens

REFERENCES = {
    1: ["A red circle and a blue square.", "Two shapes on a gray background.", "A circle left of a square."],
    2: ["A green triangle.", "One shape in the picture.", "A single small green triangle on its own."],
    3: [
        "Three shapes: a cat, a dog and a bird.",
        "The dog's friends are sitting on a bench.",
        "A dog isn't alone, is it?",
    ],
}
CANDIDATES = {1: "a red circle and a square", 2: "a green triangle", 3: "a dog and a cat on a bench"}


def _pycocoevalcap_reference(candidates, references):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
        res = tok.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
        bleu = Bleu(4).compute_score(gts, res)[0]
    return {
        **{f"bleu{i + 1}": b for i, b in enumerate(bleu)},
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


@pytest.mark.skipif(not java_available(), reason="the COCO caption evaluation's PTB tokenizer needs Java")
def test_caption_scores_equal_the_coco_caption_evaluation():
    ours = caption_scores(CANDIDATES, REFERENCES)
    reference = _pycocoevalcap_reference(CANDIDATES, REFERENCES)
    assert set(reference) <= set(ours)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_caption_scores_on_hand_checked_cases():
    # A candidate equal to its only reference: every n-gram precision is 1 and there is no brevity penalty.
    exact = caption_scores({1: "a red circle"}, {1: ["A red circle."]})
    assert exact["bleu1"] == pytest.approx(1.0, abs=1e-6) and exact["rouge_l"] == pytest.approx(1.0)
    # BLEU-1 by hand: candidate "a red square" vs reference "a red circle": 2 of 3 unigrams clipped-match, the
    # lengths are equal (no brevity penalty) → 2/3.
    partial = caption_scores({1: "a red square"}, {1: ["a red circle"]})
    assert partial["bleu1"] == pytest.approx(2 / 3, abs=1e-6)
    # ROUGE-L by hand: LCS 2, precision = recall = 2/3 → F(beta=1.2) = 2/3.
    assert partial["rouge_l"] == pytest.approx(2 / 3, abs=1e-6)


@pytest.mark.skipif(not java_available(), reason="compares with the Java PTB tokenizer")
def test_fallback_tokenizer_agrees_with_ptb_on_captions():
    captions = {k: v + [CANDIDATES[k]] for k, v in REFERENCES.items()}
    assert tokenize(captions) == {k: [_fallback_tokenize(c) for c in v] for k, v in captions.items()}


def test_caption_metric_merges_batches_and_scores_each_image_once():
    metric = CaptionScores()
    items = list(CANDIDATES.items())
    for image_id, caption in items[:2]:
        metric.update([image_id], [caption], [REFERENCES[image_id]])
    # The last image twice, as a distributed sampler's padding would repeat it.
    metric.update([items[2][0]] * 2, [items[2][1]] * 2, [REFERENCES[items[2][0]]] * 2)
    assert [r["image_id"] for r in metric.records()] == [1, 2, 3]
    scores = {k: float(v) for k, v in metric.compute().items()}
    assert scores == pytest.approx(caption_scores(CANDIDATES, REFERENCES), abs=1e-9)


def _brute_force_recall(image_emb, text_emb, text_image, k):
    sim = (text_emb @ image_emb.T).numpy()
    t2i = np.mean([text_image[t] in np.argsort(-sim[t])[:k] for t in range(len(text_emb))])
    i2t = np.mean([any(text_image[t] == i for t in np.argsort(-sim[:, i])[:k]) for i in range(len(image_emb))])
    return i2t, t2i


def test_recall_at_k_equals_brute_force_with_five_captions_per_image():
    gen = torch.Generator().manual_seed(0)
    num_images, dim = 40, 8
    image_emb = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=gen), dim=1)
    text_image = torch.arange(num_images).repeat_interleave(5)
    # Captions near their image, with enough noise that recall is far from 0 and 1.
    text_emb = torch.nn.functional.normalize(image_emb[text_image] + 1.2 * torch.randn(200, dim, generator=gen), dim=1)
    split = {"image_emb": image_emb, "text_emb": text_emb, "text_image": text_image}
    t2i, i2t = (ranking.rank for ranking in embedding_ranking(split, 10))
    metric = RetrievalRecall()
    order = torch.randperm(200, generator=gen)
    for chunk in order.split(37):  # shuffled batches; every image is sent with each of its captions (repeats)
        keys = text_image[chunk]
        metric.update(image_emb[keys], keys, keys + 1000, text_emb[chunk], chunk, keys, chunk + 5000)
    computed = metric.compute()
    for k in (1, 5, 10):
        i2t_ref, t2i_ref = _brute_force_recall(image_emb, text_emb, text_image.numpy(), k)
        assert float((t2i < k).float().mean()) == pytest.approx(t2i_ref)
        assert float((i2t < k).float().mean()) == pytest.approx(i2t_ref)
        assert float(computed[f"t2i_r{k}"]) == pytest.approx(t2i_ref)
        assert float(computed[f"i2t_r{k}"]) == pytest.approx(i2t_ref)
    assert 0.05 < float(computed["t2i_r1"]) < 0.95


def _random_split(seed: int = 0):
    """40 images × 5 captions: embeddings near their image with noise, and `tokens` that carry each row's index
    (image i's tokens are all i), so a test scorer can look pairs up."""
    gen = torch.Generator().manual_seed(seed)
    image_emb = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=1)
    text_image = torch.arange(40).repeat_interleave(5)
    text_emb = torch.nn.functional.normalize(image_emb[text_image] + 1.2 * torch.randn(200, 8, generator=gen), dim=1)
    image_tokens = Tokens(torch.arange(40.0).view(40, 1, 1).expand(40, 2, 1), torch.ones(40, 2, dtype=torch.bool))
    text_tokens = Tokens(torch.arange(200.0).view(200, 1, 1).expand(200, 3, 1), torch.ones(200, 3, dtype=torch.bool))
    return gen, image_emb, text_emb, text_image, image_tokens, text_tokens


def _rerank_metric(rerank_k: int, seed: int = 0) -> tuple[RetrievalRecall, tuple]:
    gen, image_emb, text_emb, text_image, image_tokens, text_tokens = data = _random_split(seed)
    metric = RetrievalRecall(rerank_k=rerank_k, depth=10)
    for chunk in torch.randperm(200, generator=gen).split(37):  # shuffled batches, images repeated
        keys = text_image[chunk]
        metric.update(
            image_emb[keys],
            keys,
            keys + 1000,
            text_emb[chunk],
            chunk,
            keys,
            chunk + 5000,
            Tokens(image_tokens.feats[keys], image_tokens.mask[keys]),
            Tokens(text_tokens.feats[chunk], text_tokens.mask[chunk]),
        )
    return metric, data


def _row(tokens: Tokens) -> torch.Tensor:
    return tokens.feats[:, 0, 0].long()


def test_reranked_recall_and_rankings_equal_brute_force():
    """Each query's k most similar candidates re-ordered by a match score (ALBEF's protocol), against sorting
    every query's candidates in Python."""
    k = 7
    metric, (gen, image_emb, text_emb, text_image, _, _) = _rerank_metric(k)
    match = torch.randn(40, 200, generator=gen)  # any (image, caption) match score; right pairs a little higher
    match[text_image, torch.arange(200)] += 1.5
    metric.pair_scorer = lambda images, texts: match[_row(images), _row(texts)]
    computed = metric.compute()

    def reranked(similarity: torch.Tensor, score: torch.Tensor) -> list[int]:
        order = similarity.argsort(descending=True).tolist()
        return sorted(order[:k], key=lambda c: -float(score[c])) + order[k:]

    text_lists = [reranked(text_emb[t] @ image_emb.T, match[:, t]) for t in range(200)]
    image_lists = [reranked(image_emb[i] @ text_emb.T, match[i]) for i in range(40)]
    t2i = torch.tensor([text_lists[t].index(int(text_image[t])) for t in range(200)])
    i2t = torch.tensor([min(image_lists[i].index(t) for t in range(i * 5, i * 5 + 5)) for i in range(40)])
    for r in (1, 5, 10):
        assert float(computed[f"t2i_r{r}"]) == pytest.approx(float((t2i < r).float().mean()))
        assert float(computed[f"i2t_r{r}"]) == pytest.approx(float((i2t < r).float().mean()))
    plain, _ = _rerank_metric(0)
    assert float(computed["itc_r_mean"]) == pytest.approx(float(plain.compute()["r_mean"]))
    assert abs(float(computed["r_mean"]) - float(computed["itc_r_mean"])) > 0.01  # the re-ranking moved ranks
    records = metric.predictions()
    assert [r["image_ids"] for r in records["text_to_image"]] == [[1000 + i for i in lst[:10]] for lst in text_lists]
    assert [r["caption_ids"] for r in records["image_to_text"]] == [[5000 + t for t in lst[:10]] for lst in image_lists]


def test_reranking_by_the_embedding_similarity_itself_changes_nothing():
    metric, (_, image_emb, text_emb, _, _, _) = _rerank_metric(12, seed=1)
    metric.pair_scorer = lambda images, texts: (image_emb[_row(images)] * text_emb[_row(texts)]).sum(1)
    computed = metric.compute()
    plain, _ = _rerank_metric(0, seed=1)
    expected = plain.compute()
    assert {k: float(v) for k, v in computed.items() if k != "itc_r_mean"} == pytest.approx(
        {k: float(v) for k, v in expected.items()}
    )
    assert metric.predictions() == plain.predictions()
    unbound, _ = _rerank_metric(12, seed=1)
    with pytest.raises(RuntimeError, match="re-ranking needs the matching model"):
        unbound.compute()


def test_hard_negatives_are_drawn_only_among_other_images():
    from cmvl.tasks.retrieval import sample_negatives

    torch.manual_seed(0)
    similarity = torch.randn(6, 5) * 3
    allowed = torch.rand(6, 5) < 0.5
    allowed[2] = False  # a row with no negative at all
    for _ in range(20):
        drawn, has_any = sample_negatives(similarity, allowed)
        assert has_any.tolist() == allowed.any(1).tolist()
        assert allowed[has_any.nonzero().flatten(), drawn[has_any]].all()
    # Harder negatives (more similar) are drawn more often.
    counts = torch.bincount(
        torch.stack(
            [sample_negatives(similarity[:1], torch.ones(1, 5, dtype=torch.bool))[0] for _ in range(400)]
        ).flatten(),
        minlength=5,
    )
    assert int(counts.argmax()) == int(similarity[0].argmax())


def test_tagging_metrics_equal_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(64, 6, generator=gen) < 0.3).long()
    target[:, 5] = 0  # a label absent from the split: left out of mAP and macro F1
    probs = (0.5 * target + 0.7 * torch.rand(64, 6, generator=gen)).clamp(0, 1)
    metric = TaggingMetrics(6, threshold=0.5, top_k=2)
    metric.update(probs[:30], target[:30])
    metric.update(probs[30:], target[30:])
    result = metric.compute()
    y, p = target.numpy()[:, :5], probs.numpy()[:, :5]
    assert float(result["mAP"]) == pytest.approx(sklearn_metrics.average_precision_score(y, p, average="macro"))
    predicted = (probs.numpy() >= 0.5).astype(int)
    assert float(result["f1_micro"]) == pytest.approx(
        sklearn_metrics.f1_score(target.numpy(), predicted, average="micro")
    )
    assert float(result["f1_macro"]) == pytest.approx(sklearn_metrics.f1_score(y, predicted[:, :5], average="macro"))
    top2 = np.argsort(-probs.numpy(), axis=1)[:, :2]
    assert float(result["precision_at_k"]) == pytest.approx(np.take_along_axis(target.numpy(), top2, 1).mean())


def test_box_iou_equals_torchvision_and_grounding_accuracy_counts_hits():
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(50, 2, generator=gen) * 50
    a = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=gen) * 30], dim=1)
    b = a + torch.randn(50, 4, generator=gen) * 6
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 0.5)
    expected = box_iou(a, b).diagonal()
    assert torch.allclose(paired_box_iou(a, b), expected, atol=1e-6)
    metric = GroundingAccuracy(0.5)
    metric.update(a, b)
    result = metric.compute()
    assert float(result["acc_iou50"]) == pytest.approx(float((expected >= 0.5).float().mean()))
    assert float(result["mean_iou"]) == pytest.approx(float(expected.mean()), abs=1e-6)
