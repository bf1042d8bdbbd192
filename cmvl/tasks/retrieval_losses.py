"""Retrieval losses over a caption × image similarity matrix: InfoNCE with several positives per row, and the
VSE++ hinge (Faghri et al., 2018) with max-violation hard negatives or, for a warm-up, the sum of violations.

Both read the same layout: row i is caption i, column j is the image of caption j, and `positive[i, j]` says that
caption i describes image j (the same image, or a caption of image j written the very same way); positives are
never negatives.
"""

from __future__ import annotations

import torch

LOSSES = ("infonce", "triplet")

# Odd 62-bit multipliers of the text key (fixed, so every process and every run computes the same key).
_KEY_WEIGHTS = torch.randint(1, 2**62, (512,), generator=torch.Generator().manual_seed(20_181_006)) | 1


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(softmax mass on the row's positives): InfoNCE where a row may have several right
    columns (the other captions of the same image are not negatives)."""
    all_mass = torch.logsumexp(logits, dim=1)
    positive_mass = torch.logsumexp(logits.masked_fill(~positive, -torch.inf), dim=1)
    return (all_mass - positive_mass).mean()


def text_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One int64 per text (B×L ids → B), equal for texts with the same token ids whatever their padding (left or
    right, any length): a hash computed on the device, so captions can be compared across a batch gathered from all
    processes without sending strings. Two different texts share a key with probability ~2⁻⁶³."""
    order = (attention_mask == 0).long().argsort(dim=1, stable=True)  # real tokens first
    ids, real = input_ids.gather(1, order), attention_mask.gather(1, order).bool()
    length = ids.shape[1]
    weights = _KEY_WEIGHTS.to(ids.device)[torch.arange(length, device=ids.device) % len(_KEY_WEIGHTS)]
    # int64 products wrap around: a hash modulo 2⁶⁴; the +1 keeps token id 0 from vanishing.
    return ((ids + 1) * real * weights).sum(dim=1) + real.sum(dim=1)


def positive_pairs(image_keys: torch.Tensor, caption_keys: torch.Tensor) -> torch.Tensor:
    """B×B: caption i describes the image of caption j when both are captions of one image or read the same."""
    same_image = image_keys[:, None] == image_keys[None, :]
    return same_image | (caption_keys[:, None] == caption_keys[None, :])


def hinge_triplet(
    similarity: torch.Tensor, positive: torch.Tensor, *, margin: float, hardest: torch.Tensor | bool
) -> torch.Tensor:
    """VSE++ loss of a B×B caption × image similarity (cosine) matrix whose diagonal holds the true pairs.

    For each true pair (i, i), the violations of the margin by every negative image of caption i and every negative
    caption of image i: [margin − s(i, i) + s(i, j)]₊ and [margin − s(i, i) + s(j, i)]₊. With `hardest` only the
    largest violation of each direction counts (max of hinges, i.e. the hinge of the hardest negative); without it
    their sum (VSE0, the warm-up that keeps VSE++ from collapsing early). Mean over pairs of the two directions
    summed. `hardest` may be a 0-dim bool tensor, chosen on the device (no host sync in the training step).
    """
    true_pair = similarity.diagonal()
    negative = ~positive
    to_images = (margin - true_pair[:, None] + similarity).clamp_min(0) * negative  # caption i vs image j
    to_captions = (margin - true_pair[None, :] + similarity).clamp_min(0) * negative  # caption i vs image j's pair
    hardest_form = to_images.amax(dim=1) + to_captions.amax(dim=0)
    summed_form = to_images.sum(dim=1) + to_captions.sum(dim=0)
    if isinstance(hardest, bool):
        return (hardest_form if hardest else summed_form).mean()
    return torch.where(hardest, hardest_form, summed_form).mean()
