"""`task.decoder=lstm`: Show and Tell and Show, Attend and Tell. Decoding one token at a time from the (h, c) cache
gives the logits of teacher forcing; beam search through the cache writes what re-reading the prefix writes; the
doubly-stochastic regulariser against a loop; a tiny captioning run trains and evaluates with it."""

from __future__ import annotations

import json

import pytest
import torch

from cmvl.errors import ConfigError
from cmvl.models.caption_decoder import TextDecoder
from cmvl.models.lstm_decoder import LSTMCaptionDecoder, LSTMOptions, doubly_stochastic_penalty
from cmvl.models.tokens import Tokens
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process, load_checkpoint_file

VOCAB, DIM = 23, 16


def _decoder(attention: str) -> LSTMCaptionDecoder:
    torch.manual_seed(0)
    decoder = LSTMCaptionDecoder(
        vocab_size=VOCAB, dim=DIM, hidden=24, max_positions=12, dropout=0.3, attention=attention
    )
    return decoder.eval()


def _memory(batch: int = 3) -> Tokens:
    torch.manual_seed(1)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False  # a padded image: its pads are never attended
    return Tokens(torch.randn(batch, 5, DIM), mask)


@pytest.mark.parametrize("attention", ["none", "soft"])
def test_incremental_decoding_equals_teacher_forcing(attention):
    decoder, memory = _decoder(attention), _memory()
    tokens = torch.randint(0, VOCAB, (3, 7))
    with torch.no_grad():
        forced = decoder(tokens, memory)
        state = decoder.start(memory)
        for t in range(tokens.shape[1]):
            logits, state = decoder.step(tokens[:, : t + 1], memory, state)
            torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-5)
    if attention == "soft":
        weights = decoder.last_attention
        assert weights.shape == (3, 7, 5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 7))
        assert (weights[0, :, 3:] == 0).all()  # padding gets no attention
    # The image is read: another image, other logits from the first token on.
    with torch.no_grad():
        other = decoder(tokens, Tokens(memory.feats.flip(0), memory.mask.flip(0)))
    assert not torch.allclose(other[:, 0], forced[:, 0])


class RereadingDecoder(LSTMCaptionDecoder):
    """The same decoder decoding the slow way: every step re-runs teacher forcing over the whole prefix."""

    start, step, reorder = TextDecoder.start, TextDecoder.step, TextDecoder.reorder


@pytest.mark.parametrize("attention", ["none", "soft"])
def test_beam_search_through_the_cache_writes_what_rereading_writes(attention):
    decoder, memory = _decoder(attention), _memory()
    slow = RereadingDecoder(vocab_size=VOCAB, dim=DIM, hidden=24, max_positions=12, dropout=0.3, attention=attention)
    slow.load_state_dict(decoder.state_dict())
    slow.eval()
    ids = {"bos_id": 1, "eos_id": 2, "pad_id": 0, "max_length": 8}
    for beam in (1, 3):
        fast_tokens = decoder.generate(memory, beam_size=beam, **ids)
        assert torch.equal(fast_tokens, slow.generate(memory, beam_size=beam, **ids))
    assert fast_tokens.shape[0] == 3


def test_doubly_stochastic_penalty_matches_a_loop():
    torch.manual_seed(2)
    attention = torch.rand(2, 4, 3).softmax(-1)
    steps = torch.tensor([[True, True, True, False], [True, True, False, False]])
    memory_mask = torch.tensor([[True, True, True], [True, True, False]])
    expected = 0.0
    for b in range(2):
        for i in range(3):
            if memory_mask[b, i]:
                looked = sum(float(attention[b, t, i]) for t in range(4) if steps[b, t])
                expected += (1 - looked) ** 2
    assert doubly_stochastic_penalty(attention, steps, memory_mask).item() == pytest.approx(expected / 2, rel=1e-6)


class StandInModel(torch.nn.Module):
    """What the caption task reads of a model: its heads and image tokens (3 tokens per image, from the pixels)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.pixels = torch.nn.Linear(16, DIM)
        self.heads = torch.nn.ModuleDict({"caption": head})

    def encode_images(self, images, image_index=None):
        feats = self.pixels(images.float().flatten(2)[:, :, :16] / 255)
        tokens = Tokens(feats, torch.ones(feats.shape[:2], dtype=torch.bool))
        return tokens if image_index is None else tokens.select(image_index)


def test_the_caption_loss_adds_the_weighted_regulariser_for_soft_attention():
    from cmvl.data.text import TrainedWordPiece
    from cmvl.tasks.caption import AttendedTeacherForced, CaptionTargetsBatch, CaptionTask
    from tests.batch_helpers import batch_of

    captions = ["a red circle", "two blue squares", "a green triangle left of a circle"]
    tokenizer = TrainedWordPiece(vocab_size=60).build(captions * 3)
    encoded = tokenizer(captions, padding=True, return_tensors="pt")
    batch = batch_of(CaptionTargetsBatch(torch.arange(3)), 3, task="caption", texts=captions)
    batch.input_ids, batch.attention_mask = encoded["input_ids"], encoded["attention_mask"]
    losses = {}
    for attention in ("none", "soft"):
        task = CaptionTask(decoder="lstm", lstm={"attention": attention, "attention_weight": 2.0}, label_smoothing=0)
        task.bind_tokenizer(tokenizer)
        torch.manual_seed(0)
        model = StandInModel(task.build_head(DIM))
        outputs = task.forward(model, batch)
        assert isinstance(outputs, AttendedTeacherForced) == (attention == "soft")
        cross_entropy = task.framing.next_token_loss(outputs)
        losses[attention] = (task.loss(outputs, batch), cross_entropy, outputs)
    loss, cross_entropy, outputs = losses["soft"]
    assert model.heads["caption"].last_attention is None  # handed over, not kept with its graph
    penalty = doubly_stochastic_penalty(outputs.attention, outputs.labels != -100, outputs.memory_mask)
    assert penalty > 0 and loss.item() == pytest.approx((cross_entropy + 2.0 * penalty).item(), rel=1e-6)
    loss.backward()  # the regulariser reaches the attention parameters
    assert model.heads["caption"].att_score.weight.grad.abs().sum() > 0
    assert losses["none"][0].item() == pytest.approx(losses["none"][1].item())


def test_bad_lstm_options_are_one_line():
    with pytest.raises(ConfigError, match="task.lstm.attention=hard: choose one of none, soft"):
        LSTMOptions.from_config({"attention": "hard"})
    with pytest.raises(ConfigError, match="task.lstm.layers: not a key of task.lstm"):
        LSTMOptions.from_config({"layers": 2})


def test_a_soft_attention_lstm_captioner_trains_with_its_regulariser_and_evaluates(tmp_path, tiny_world):
    run_dir = tmp_path / "run"
    overrides = [*TINY_WORLD_ANY_TASK, *TINY_TRAINING, "task=caption", "task.decoder=lstm", "task.lstm.attention=soft"]
    result = cli_in_process("train", *overrides, "task.beam_size=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/caption/cider" and summary["best_score"] is not None
    weights = load_checkpoint_file(run_dir / "checkpoints" / "best.ckpt")["state_dict"]
    assert any(k.endswith("heads.caption.cell.weight_ih") for k in weights)  # the LSTM cell, not a transformer
    assert not any(".layers.0.cross_attn." in k for k in weights)
