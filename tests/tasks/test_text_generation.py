"""Text-writing heads: beam search, and VQA in generative mode (answers written by a decoder, scored by the
official string-level VQA accuracy)."""

from __future__ import annotations

import torch

from cmvl.data.text import TrainedWordPiece
from cmvl.metrics.vqa_accuracy import VQAAccuracy
from cmvl.metrics.vqa_normalize import vqa_score
from cmvl.models.caption_decoder import CaptionDecoder
from cmvl.models.tokens import Tokens
from cmvl.tasks.text_generation import TextFraming
from cmvl.tasks.vqa import VQATask
from tests.batch_helpers import batch_of
from tests.tasks.test_vqa_task import ROWS, _table


def _decoder_and_memory(seed: int = 0):
    torch.manual_seed(seed)
    decoder = CaptionDecoder(vocab_size=12, dim=16, layers=1, heads=2, max_positions=12, dropout=0.0).eval()
    memory = Tokens(torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool))
    return decoder, memory


def _log_prob(decoder, memory, tokens, bos=1, eos=2):
    """Summed log-probability of each generated sequence up to and including its EOS."""
    total = torch.zeros(tokens.shape[0])
    for b in range(tokens.shape[0]):
        seq = [bos]
        for t in tokens[b].tolist():
            logp = decoder(torch.tensor([seq]), Tokens(memory.feats[b : b + 1], memory.mask[b : b + 1]))[0, -1]
            total[b] += logp.log_softmax(-1)[t]
            seq.append(t)
            if t == eos:
                break
    return total


def test_beam_size_one_is_greedy_and_a_wider_beam_scores_no_worse():
    decoder, memory = _decoder_and_memory()
    greedy = decoder.generate(memory, bos_id=1, eos_id=2, pad_id=0, max_length=6, beam_size=1)
    # Plain greedy loop, one sequence at a time.
    for b in range(3):
        seq = [1]
        for _ in range(6):
            logits = decoder(torch.tensor([seq]), Tokens(memory.feats[b : b + 1], memory.mask[b : b + 1]))[0, -1]
            seq.append(int(logits.argmax()))
            if seq[-1] == 2:
                break
        expected = seq[1:] + [0] * (greedy.shape[1] - len(seq) + 1)
        assert greedy[b].tolist() == expected
    beam = decoder.generate(memory, bos_id=1, eos_id=2, pad_id=0, max_length=6, beam_size=4)
    assert torch.all(_log_prob(decoder, memory, beam) >= _log_prob(decoder, memory, greedy) - 1e-5)


def test_generative_vqa_learns_to_write_answers_scored_officially():
    table = _table(ROWS)
    task = VQATask(min_answer_count=1, answer_mode="generate", answer_max_length=6, dropout=0.0)
    task.fit(table)
    tokenizer = TrainedWordPiece(vocab_size=200).build(task.vocabulary_texts(table))
    task.bind_tokenizer(tokenizer)
    assert all(tokenizer.convert_tokens_to_ids(a) != tokenizer.unk_token_id for a in ("yes", "red"))
    targets = task.targets(table).collate(list(range(len(ROWS))))
    assert targets.human_answers[1] == ROWS[1][1]
    batch = batch_of(targets, len(ROWS))
    torch.manual_seed(0)
    decoder = task.build_head(32)
    memory = Tokens(torch.randn(len(ROWS), 4, 32), torch.ones(len(ROWS), 4, dtype=torch.bool))  # one "image" each
    framing = TextFraming(tokenizer)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(50):  # overfit the five answers
        outputs = framing.teacher_forcing(decoder, memory, targets.answer_ids, targets.answer_mask)
        loss = task.loss(outputs, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()
    outputs = framing.generate(decoder, memory, max_length=6, beam_size=1, length_penalty=0.0)
    written = framing.decode(outputs.tokens)
    assert written == [r[3] for r in ROWS]
    metric = VQAAccuracy()
    task.update_metric(metric, outputs, batch)
    official = sum(vqa_score(a, r[1]) for a, r in zip(written, ROWS)) / len(ROWS)
    assert float(metric.compute()["acc"]) == official
    assert [p["answer"] for p in task.predictions(outputs, batch)] == written
