"""cmvl's MultiHeadAttention: the function of nn.MultiheadAttention (same init for a seed, its checkpoints load),
with weights on the autograd path, an SDPA fast path equal to the explicit one, and projections quantisation sees."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from cmvl.errors import ConfigError
from cmvl.models import caption_decoder as caption_decoder_module
from cmvl.models.attention import MultiHeadAttention
from cmvl.models.caption_decoder import CaptionDecoder
from cmvl.models.fusion import attention as cross_module
from cmvl.models.fusion import base as base_module
from cmvl.models.fusion import film as film_module
from cmvl.models.fusion import residual as residual_module
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.fusion.film import FiLMFusion
from cmvl.models.fusion.merged import MergedFusion
from cmvl.models.fusion.residual import GatedResidualFusion
from cmvl.models.tokens import Tokens
from cmvl.training.checkpoint_schema import rename_torch_decoder_keys, split_packed_attention

B, DIM, HEADS = 3, 32, 4
TOL = 1e-6


class _TorchAttention(nn.MultiheadAttention):
    """How the fusions built and called their attention before: nn.MultiheadAttention, batch first, per-head
    weights."""

    def __init__(self, dim: int, heads: int, dropout: float, *, heads_key: str = "heads") -> None:
        super().__init__(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, need_weights=False):
        return super().forward(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights=False
        )


class _TorchCaptionDecoder(nn.Module):
    """The caption decoder as it was: nn.TransformerDecoder over token + position embeddings, tied output."""

    def __init__(self, *, vocab_size: int, dim: int, layers: int, heads: int, max_positions: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        self.out = nn.Linear(dim, vocab_size, bias=False)
        self.out.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, tokens, memory, padding=None):
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position(torch.arange(length))
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        x = self.layers(
            x,
            memory.feats,
            tgt_mask=causal,
            tgt_is_causal=True,
            tgt_key_padding_mask=padding,
            memory_key_padding_mask=~memory.mask,
        )
        return self.out(x)


DECODER = {"vocab_size": 20, "dim": DIM, "layers": 2, "heads": HEADS, "max_positions": 10, "dropout": 0.0}
FUSIONS = {
    "cross": lambda: CrossAttentionFusion(dim=DIM, heads=HEADS, co_attention=True, dropout=0.0),
    "film": lambda: FiLMFusion(dim=DIM, heads=HEADS, dropout=0.0),
    "residual": lambda: GatedResidualFusion(dim=DIM, heads=HEADS, dropout=0.0),
    "merged": lambda: MergedFusion(dim=DIM, heads=HEADS, dropout=0.0),
}


def _built_with_torch_attention(build, monkeypatch):
    """The module `build` makes, with nn.MultiheadAttention where cmvl's attention is now."""
    with monkeypatch.context() as patch:
        for module in (base_module, cross_module, film_module, residual_module):
            patch.setattr(module, "MultiHeadAttention", _TorchAttention)
        return build()


def _padding_mask(batch: int, length: int, real: list[int]) -> torch.Tensor:
    return torch.arange(length)[None, :] < torch.tensor(real)[:, None]  # True = real token


def _inputs() -> tuple[Tokens, Tokens]:
    vision = Tokens(torch.randn(B, 9, DIM), _padding_mask(B, 9, [9, 6, 9]))
    text = Tokens(torch.randn(B, 5, DIM), _padding_mask(B, 5, [5, 3, 1]))
    return vision, text


def _seeded(build, seed: int = 7):
    torch.manual_seed(seed)
    return build()


def _converted(old: nn.Module, new: nn.Module) -> nn.Module:
    """`new` with `old`'s weights loaded, strictly, after the checkpoint migration that converts them (with the
    module where a version-1 checkpoint held it: under `model.heads.<task>.` for a decoder, else the fusion)."""
    place = "model.heads.caption." if isinstance(new, CaptionDecoder) else "model.fusion."
    state = {place + key: value for key, value in copy.deepcopy(old.state_dict()).items()}
    rename_torch_decoder_keys(state, place)
    split_packed_attention(state, place)
    new.load_state_dict({key.removeprefix(place): value for key, value in state.items()})
    return new


MASKS = {
    "none": lambda: (None, None),
    "padding": lambda: (~_padding_mask(B, 7, [7, 4, 2]), None),
    "padding and causal": lambda: (~_padding_mask(B, 7, [7, 4, 2]), torch.ones(5, 7, dtype=torch.bool).triu(1)),
    "float masks": lambda: (torch.randn(B, 7), torch.randn(5, 7)),
    # every query keeps its first key: a query that may attend to nothing is where the two differ (NaN vs zeros)
    "per-head mask": lambda: (None, (torch.rand(B * HEADS, 5, 7) > 0.6).index_fill(2, torch.tensor([0]), False)),
}


@pytest.mark.parametrize("masks", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("need_weights", [False, True])
def test_same_function_as_torch_multihead_attention(masks, need_weights):
    old = _seeded(lambda: nn.MultiheadAttention(DIM, HEADS, batch_first=True)).eval()
    new = _converted(old, MultiHeadAttention(DIM, HEADS)).eval()
    query, memory = torch.randn(B, 5, DIM), torch.randn(B, 7, DIM)
    key_padding_mask, attn_mask = masks()
    for q, kv in ((query, memory), (memory[:, :5], memory[:, :5])):  # cross- and self-attention
        args = {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask, "need_weights": need_weights}
        if kv.shape[1] == 5 and key_padding_mask is not None:
            args["key_padding_mask"] = key_padding_mask[:, :5]
        if attn_mask is not None:
            args["attn_mask"] = attn_mask[..., : kv.shape[1]]
        expected, expected_weights = old(q, kv, kv, average_attn_weights=False, **args)
        out, weights = new(q, kv, kv, **args)
        torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
        if need_weights:
            torch.testing.assert_close(weights, expected_weights, atol=TOL, rtol=0)
        else:
            assert weights is None


def test_same_seed_same_parameters_as_torch_multihead_attention():
    old = _seeded(lambda: nn.MultiheadAttention(DIM, HEADS, batch_first=True))
    new = _seeded(lambda: MultiHeadAttention(DIM, HEADS))
    converted = _converted(old, MultiHeadAttention(DIM, HEADS))
    for name, value in new.state_dict().items():
        assert torch.equal(value, converted.state_dict()[name]), name
    # And it drew as many random numbers: what is built after it is unchanged too.
    assert torch.equal(
        _seeded(lambda: (nn.MultiheadAttention(DIM, HEADS, batch_first=True), torch.rand(5))[1]),
        _seeded(lambda: (MultiHeadAttention(DIM, HEADS), torch.rand(5))[1]),
    )


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_same_parameters_and_function_as_with_torch_attention(name, monkeypatch):
    old = _seeded(lambda: _built_with_torch_attention(FUSIONS[name], monkeypatch)).eval()
    new = _seeded(FUSIONS[name]).eval()
    fresh_state = copy.deepcopy(new.state_dict())
    converted = _converted(old, new)
    # The same seed drew the same parameters: converting the old ones changed nothing.
    for key, value in converted.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key
    vision, text = _inputs()
    for train in (False, True):  # dropout 0: train mode only changes which kernels run
        old.train(train), new.train(train)
        expected, out = old(vision, text), new(vision, text)
        torch.testing.assert_close(out.pooled, expected.pooled, atol=TOL, rtol=0)
        torch.testing.assert_close(out.tokens.feats, expected.tokens.feats, atol=TOL, rtol=0)


def test_caption_decoder_same_parameters_and_function_as_torch_transformer_decoder():
    old = _seeded(lambda: _TorchCaptionDecoder(**DECODER)).eval()
    new = _seeded(lambda: CaptionDecoder(**DECODER)).eval()
    fresh_state = copy.deepcopy(new.state_dict())
    converted = _converted(old, new)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, fresh_state[key]), key
    tokens = torch.randint(3, 20, (B, 7))
    padding = ~_padding_mask(B, 7, [7, 5, 2])
    memory = Tokens(torch.randn(B, 9, DIM), _padding_mask(B, 9, [9, 4, 9]))
    for train in (False, True):
        old.train(train), new.train(train)
        torch.testing.assert_close(new(tokens, memory, padding), old(tokens, memory, padding), atol=TOL, rtol=0)
        torch.testing.assert_close(new(tokens, memory), old(tokens, memory), atol=TOL, rtol=0)


def test_caption_decoder_layers_are_cmvl_attention():
    decoder = CaptionDecoder(**DECODER)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in decoder.modules())
    assert sum(isinstance(m, MultiHeadAttention) for m in decoder.modules()) == 2 * DECODER["layers"]
    assert isinstance(decoder.layers[0], caption_decoder_module.DecoderLayer)


@pytest.mark.parametrize("masks", MASKS.values(), ids=MASKS.keys())
def test_fast_path_equals_explicit_path(masks):
    attention = _seeded(lambda: MultiHeadAttention(DIM, HEADS))
    key_padding_mask, attn_mask = masks()
    if key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
        key_padding_mask[2] = True  # a sample with no key to attend to: zeros on both paths, not NaN
    query, memory = torch.randn(B, 5, DIM), torch.randn(B, 7, DIM)
    fast, no_weights = attention(query, memory, memory, key_padding_mask, attn_mask)
    explicit, weights = attention(query, memory, memory, key_padding_mask, attn_mask, need_weights=True)
    assert no_weights is None and weights.shape == (B, HEADS, 5, 7)
    assert torch.isfinite(explicit).all()
    torch.testing.assert_close(explicit, fast, atol=TOL, rtol=0)


def test_recorded_weights_are_on_the_autograd_path():
    attention = _seeded(lambda: MultiHeadAttention(DIM, HEADS))
    attention.record_weights = True
    query, memory = torch.randn(B, 5, DIM), torch.randn(B, 7, DIM)
    out, returned = attention(query, memory, memory, key_padding_mask=~_padding_mask(B, 7, [7, 4, 2]))
    assert returned is None and attention.weights.shape == (B, HEADS, 5, 7)
    # Grad-CAM reads d(output)/d(weights): the recorded weights are the ones the output was computed from.
    (grad_weights,) = torch.autograd.grad(out.square().sum(), attention.weights, retain_graph=True)
    assert grad_weights.abs().sum() > 0
    (attention.weights * torch.randn_like(attention.weights)).sum().backward()
    assert attention.q_proj.weight.grad.abs().sum() > 0 and attention.k_proj.weight.grad.abs().sum() > 0
    attention.record_weights = False
    attention(query, memory, memory)
    assert attention.weights is None


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_attention_maps_are_on_the_output_autograd_path(name):
    fusion = _seeded(FUSIONS[name])
    fusion.record_attention = True
    out = fusion(*_inputs())
    maps = fusion.attention_maps()
    assert maps
    score = out.pooled.square().sum() + out.tokens.feats.square().sum()  # every map feeds one of the two
    grads = torch.autograd.grad(score, list(maps.values()))
    assert all(g.abs().sum() > 0 for g in grads)


def _quantised_projection_count(model: nn.Module) -> tuple[int, int]:
    """(projections of every cmvl attention module, how many of them dynamic int8 quantisation converted)."""
    quantised = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    attentions = [m for m in quantised.modules() if isinstance(m, MultiHeadAttention)]
    projections = [p for m in attentions for p in (m.q_proj, m.k_proj, m.v_proj, m.out_proj)]
    return len(projections), sum(isinstance(p, DynamicQuantizedLinear) for p in projections)


@pytest.mark.parametrize(
    "build",
    [FUSIONS["cross"], FUSIONS["merged"], lambda: CaptionDecoder(**DECODER)],
    ids=["cross", "merged", "decoder"],
)
def test_dynamic_int8_quantisation_converts_every_projection(build):
    model = _seeded(build).eval()
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantised = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert sum(isinstance(m, DynamicQuantizedLinear) for m in quantised.modules()) == linears
    total, converted = _quantised_projection_count(model)
    assert total > 0 and converted == total
    if isinstance(model, CaptionDecoder):
        tokens, memory = torch.randint(3, 20, (B, 6)), Tokens(torch.randn(B, 9, DIM), torch.ones(B, 9, dtype=bool))
        torch.testing.assert_close(quantised(tokens, memory), model(tokens, memory), atol=0.1, rtol=0.1)
    else:
        vision, text = _inputs()
        torch.testing.assert_close(quantised(vision, text).pooled, model(vision, text).pooled, atol=0.1, rtol=0.1)


def test_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="heads=5"):
        MultiHeadAttention(DIM, 5)
