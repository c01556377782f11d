"""Greedy answers of the global model to the first held-out chats after every round, saved in generations.jsonl.

Perplexity says how likely the references are; reading what the model actually says tells whether instruction
tuning works. Each held-out chat is cut before its last assistant turn: the model answers the turns before it
(rendered with the generation prompt), and that turn is the reference.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from privfed.data.chat import Exchange, last_exchange, render
from privfed.federation.setup import Federation
from privfed.results import RunDirectory
from privfed.server.events import Callback, RoundRecord, RunState


def prompt_ids(exchange: Exchange, tokenizer: PreTrainedTokenizerBase, max_length: int) -> torch.Tensor:
    """The exchange's context rendered with the generation prompt, as ids of shape [1, <= max_length]: the last
    ``max_length`` tokens, so a long chat is read as far back as training reads (``data.max_length``)."""
    text = render(exchange.context, tokenizer, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return ids[:, -max_length:]


def greedy_answer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: torch.Tensor,
                  max_new_tokens: int) -> str:
    """The model's greedy continuation of ``prompt`` (:func:`prompt_ids`), up to ``max_new_tokens`` tokens or the
    end of its turn (the tokenizer's eos token, when it has one), without special tokens.

    ``model`` is the unwrapped network (plain or peft): Opacus' hooks sit on its layers but record nothing in eval
    mode; the model is put in eval mode for the answer and returned to the mode it was in.
    """
    ids = prompt.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():  # peft's soft prompt: positions come from the ids
            warnings.filterwarnings("ignore", message="Position ids are not supported")
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


class Generations(Callback):
    """Answers the first ``evaluation.generations`` held-out chats (those with an assistant turn) greedily after
    every round; the lines are written when the round is committed."""

    def __init__(self, federation: Federation, run_dir: RunDirectory):
        self.fed, self.run_dir = federation, run_dir
        exchanges = [e for e in map(last_exchange, federation.test_chats) if e is not None]
        self.exchanges = exchanges[:federation.config.evaluation.generations]
        # rendered now, so a chat the template refuses is a config error before anything is written
        self.prompts = [prompt_ids(e, federation.tokenizer, federation.config.data.max_length)
                        for e in self.exchanges]
        self.pending: list[dict] = []

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        runtime = self.fed.runtime
        runtime.load(state.global_vector)
        max_new_tokens = self.fed.config.evaluation.max_new_tokens
        self.pending = [{"round": record.round, "prompt": e.question, "reference": e.reference,
                         "generated": greedy_answer(runtime.model, self.fed.tokenizer, prompt, max_new_tokens)}
                        for e, prompt in zip(self.exchanges, self.prompts, strict=True)]

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        self.run_dir.save_generations(record.round, self.pending)
