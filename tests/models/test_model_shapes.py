"""Every encoder and fusion returns the documented shapes; the full model runs forward and backward."""

import pytest
import torch

from cmvl.data.text import TrainedWordPiece
from cmvl.errors import ConfigError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.fusion.bilinear import BilinearFusion
from cmvl.models.fusion.concat import ConcatFusion
from cmvl.models.fusion.film import FiLMFusion
from cmvl.models.fusion.graph import GraphFusion, grid_adjacency
from cmvl.models.fusion.merged import MergedFusion
from cmvl.models.fusion.residual import GatedResidualFusion
from cmvl.models.text.bert import TinyBertEncoder
from cmvl.models.tokens import Tokens
from cmvl.models.vision.grid import sincos_2d
from cmvl.models.vision.tiny_cnn import TinyCNNEncoder
from cmvl.models.vision.torchvision_cnn import TorchvisionCNNEncoder

B, DIM = 3, 32


@pytest.fixture(scope="module")
def tokenizer():
    return TrainedWordPiece(vocab_size=120).build(["is there a red circle?", "how many squares are there?"] * 5)


def _text(tokenizer):
    enc = tokenizer(
        ["is there a red circle?", "how many?", "what color is the square left of it?"],
        padding=True,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]


def test_tiny_cnn_grid_tokens():
    enc = TinyCNNEncoder(channels=32, stem_stride=4, downsample=1)
    out = enc(torch.randn(B, 3, 64, 64))
    assert out.feats.shape == (B, 64, 32) and out.mask.shape == (B, 64) and out.mask.all()
    assert enc.out_dim == 32


def test_resnet_grid_tokens():
    enc = TorchvisionCNNEncoder(name="resnet18")
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.feats.shape == (2, 4, 512) and enc.out_dim == 512


def test_resnet_pretrained_path_round_trip(tmp_path):
    import torchvision

    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    enc = TorchvisionCNNEncoder(name="resnet18", pretrained=str(tmp_path / "r18.pt"))
    assert torch.equal(enc.body[0].weight, net.conv1.weight)


@pytest.mark.parametrize(
    ("name", "channels"),
    [("mobilenet_v3_small", 576), ("efficientnet_b0", 1280), ("regnet_y_400mf", 440), ("convnext_tiny", 768)],
)
def test_any_torchvision_cnn_by_name(name, channels):
    enc = TorchvisionCNNEncoder(name=name)
    out = enc(torch.randn(1, 3, 64, 64))
    assert enc.out_dim == channels and out.feats.shape[-1] == channels


def test_torchvision_cnn_freeze_first_stages_keeps_their_batchnorm_statistics():
    enc = TorchvisionCNNEncoder(name="resnet18", freeze=2).train()
    trainable = {name.split(".")[1] for name, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"6", "7"}  # body = conv1, bn1, relu, maxpool, layer1..layer4: only layer3 and layer4 learn
    frozen_bn, live_bn = enc.body[4][0].bn1, enc.body[6][0].bn1
    before = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    enc(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, before[0]) and not torch.equal(live_bn.running_mean, before[1])


@pytest.mark.parametrize("bad", [("vit_b_16", "not a torchvision CNN"), ("resnet_7", "unknown torchvision")])
def test_torchvision_cnn_bad_names_say_why(bad):
    name, message = bad
    with pytest.raises(ConfigError, match=message):
        TorchvisionCNNEncoder(name=name)


def test_tiny_bert_tokens(tokenizer):
    ids, mask = _text(tokenizer)
    enc = TinyBertEncoder(tokenizer=tokenizer, hidden_size=DIM, layers=1, heads=2, intermediate_size=64)
    out = enc(ids, mask)
    assert out.feats.shape == (*ids.shape, DIM) and torch.equal(out.mask, mask.bool())


def test_sincos_positions_distinct():
    pos = sincos_2d(4, 4, 16, device=torch.device("cpu"), dtype=torch.float32)
    assert pos.shape == (16, 16) and torch.unique(pos, dim=0).shape[0] == 16


@pytest.mark.parametrize(
    "fusion",
    [
        ConcatFusion(dim=DIM),
        CrossAttentionFusion(dim=DIM, layers=2, heads=4),
        CrossAttentionFusion(dim=DIM, layers=1, heads=4, co_attention=True, pool="cls"),
        FiLMFusion(dim=DIM, layers=2, heads=4),
        GatedResidualFusion(dim=DIM, layers=2, heads=4),
        BilinearFusion(dim=DIM, factors=3, glimpses=2),
        MergedFusion(dim=DIM, layers=2, heads=4),
        MergedFusion(dim=DIM, layers=1, heads=4, pool="mean"),
        GraphFusion(dim=DIM, layers=2, heads=4),
        GraphFusion(dim=DIM, layers=1, heads=4, text_window=None, image_edges="full"),
    ],
    ids=lambda f: type(f).__name__,
)
def test_fusion_shapes_and_padding(fusion):
    vision = Tokens(torch.randn(B, 16, DIM), torch.ones(B, 16, dtype=torch.bool))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    text = Tokens(torch.randn(B, 5, DIM), mask)
    fusion.eval()
    out = fusion(vision, text)
    assert out.pooled.shape == (B, DIM)
    assert out.tokens.feats.shape[0] == B and out.tokens.feats.shape[-1] == DIM
    assert out.tokens.mask.shape == out.tokens.feats.shape[:2]
    # Padding must not leak: changing padded text positions leaves the pooled vector unchanged.
    noisy = Tokens(torch.where(mask.unsqueeze(-1), text.feats, torch.randn_like(text.feats)), mask)
    assert torch.allclose(fusion(vision, noisy).pooled, out.pooled, atol=1e-5)


@pytest.mark.parametrize(
    ("fusion", "key", "shape"),
    [
        (CrossAttentionFusion(dim=DIM, layers=2, heads=4), "layer1.text_to_vision", (B, 4, 5, 16)),
        (FiLMFusion(dim=DIM, layers=2, heads=4), "layer1.vision_self", (B, 4, 16, 16)),
        (GatedResidualFusion(dim=DIM, layers=2, heads=4), "layer1.text_to_vision", (B, 4, 5, 16)),
        (BilinearFusion(dim=DIM, glimpses=2), "glimpses", (B, 2, 1, 16)),
        (MergedFusion(dim=DIM, layers=2, heads=4), "layer1.joint", (B, 4, 22, 22)),
        (GraphFusion(dim=DIM, layers=2, heads=4), "layer1.to_image", (B, 4, 16, 21)),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, torch.nn.Module) else None,
)
def test_attention_maps_recorded_on_request(fusion, key, shape):
    fusion.eval()  # no attention dropout
    vision = Tokens(torch.randn(B, 16, DIM), torch.ones(B, 16, dtype=torch.bool))
    text = Tokens(torch.randn(B, 5, DIM), torch.ones(B, 5, dtype=torch.bool))
    fusion(vision, text)
    assert fusion.attention_maps() == {}
    fusion.record_attention = True
    fusion(vision, text)
    maps = fusion.attention_maps()
    assert maps[key].shape == shape
    # Attention rows are distributions over what the query may see.
    assert torch.allclose(maps[key].sum(-1), torch.ones(shape[:-1]), atol=1e-5)


def test_graph_edges():
    grid = grid_adjacency(9, (3, 3), torch.device("cpu"))  # 3×3 grid: the centre sees all 9, a corner sees 4
    assert grid[4].sum() == 9 and grid[0].sum() == 4 and torch.equal(grid, grid.T)
    assert grid_adjacency(9, None, torch.device("cpu")).all()  # no grid (boxes): all-to-all
    with_cls = grid_adjacency(10, (3, 3), torch.device("cpu"))  # a [CLS] token in front of the grid sees all
    assert with_cls[0].all() and with_cls[:, 0].all() and torch.equal(with_cls[1:, 1:], grid)
    wide = grid_adjacency(8, (2, 4), torch.device("cpu"))  # 2 rows × 4 columns: cell 0 sees 0, 1, 4, 5
    assert wide[0].nonzero().flatten().tolist() == [0, 1, 4, 5] and wide[7].nonzero().flatten().tolist() == [2, 3, 6, 7]
    fusion = GraphFusion(dim=DIM, layers=1, heads=4, text_window=1)
    fusion.record_attention = True
    fusion(
        Tokens(torch.randn(1, 9, DIM), torch.ones(1, 9, dtype=torch.bool), (3, 3)),
        Tokens(torch.randn(1, 5, DIM), torch.ones(1, 5, dtype=torch.bool)),
    )
    to_text = fusion.attention_maps()["layer0.to_text"][0, 0]  # 5 words × (5 words + 9 regions)
    assert (to_text[0, 2:5] == 0).all() and (to_text[0, :2] > 0).all() and (to_text[:, 5:] > 0).all()
    to_image = fusion.attention_maps()["layer0.to_image"][0, 0]  # 9 regions × (5 words + 9 regions)
    assert (to_image[0, 5:][~grid[0]] == 0).all()


def test_full_model_forward_backward(tokenizer):
    ids, mask = _text(tokenizer)
    model = VisionLanguageModel(
        vision=TinyCNNEncoder(channels=32),
        text=TinyBertEncoder(tokenizer=tokenizer, hidden_size=DIM, layers=1),
        fusion=CrossAttentionFusion(dim=DIM, layers=1),
        heads={"vqa": torch.nn.Linear(DIM, 7)},
        dim=DIM,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    )
    images = torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8)
    logits = model.heads["vqa"](model(images, ids, mask).pooled)
    assert logits.shape == (B, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
