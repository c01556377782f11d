"""Chat records: the assistant-token mask, the loss it selects, and the generations written after each round."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import privfed
from privfed import assets
from privfed.config import Task
from privfed.data.chat import encode_chat, last_exchange, render
from privfed.data.records import Message, TextDataset
from privfed.data.tokenize import FIELDS, as_batch, tokenize
from privfed.errors import ConfigError
from privfed.federation import setup
from privfed.models.losses import loss_from_logits, model_inputs, token_counts
from privfed.results import GENERATIONS, RunDirectory

# A template for MiniLM's WordPiece tokenizer (which has none): "role : content [SEP] " per turn.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")

MULTI_TURN = (Message("system", "be brief"), Message("user", "Hi, how are you?"), Message("assistant", "Fine, thanks."),
              Message("user", "What is 2+2?"), Message("assistant", "It is 4."))


def _chats(n: int) -> tuple[tuple[Message, ...], ...]:
    """Short chats; every third one has a second exchange."""
    return tuple((Message("user", f"what is {i} plus {i}?"), Message("assistant", f"it is {2 * i}."))
                 + ((Message("user", "thanks"), Message("assistant", "you are welcome.")) if i % 3 == 0 else ())
                 for i in range(n))


@pytest.fixture(scope="module")
def wordpiece():
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    tok.chat_template = TEMPLATE
    return tok


def _expected(segments: list[tuple[str, int]], tok) -> tuple[list[int], list[int]]:
    """Token ids and mask built segment by segment: each segment tokenised alone, its mask value on all of it."""
    ids: list[int] = []
    mask: list[int] = []
    for text, scored in segments:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [scored] * len(piece)
    return ids, mask


@pytest.mark.parametrize("chat", [MULTI_TURN[1:3], MULTI_TURN], ids=["one_exchange", "system_and_two_exchanges"])
def test_mask_is_exactly_the_assistant_tokens(wordpiece, chat):
    """Every assistant turn's content and its end marker [SEP] are scored; roles, user turns and the system turn
    are not. Checked token by token against the turns tokenised one by one."""
    segments = []
    for m in chat:
        segments += [(f"{m.role} :", 0), (f"{m.content} [SEP]", int(m.role == "assistant"))]
    assert "".join(f"{t} " for t, _ in segments) == render(chat, wordpiece)
    ids, mask = encode_chat(chat, wordpiece)
    assert (ids, mask) == _expected(segments, wordpiece)
    assert sum(mask) > 0


def _smollm2_folder() -> Path:
    """The converted SmolLM2 folder if slow tests made it (converting takes ~20 s: not done here)."""
    found = sorted(assets.cache_dir().glob("smollm2-*/tokenizer.json"))
    if not found:
        pytest.skip("SmolLM2 is not converted yet (python3 -m pytest -m slow converts it)")
    return found[0].parent


def test_smollm2_mask_is_exactly_the_assistant_tokens():
    """ChatML with SmolLM2's injected system turn: the assistant's content and <|im_end|> are scored, the newline
    after <|im_end|> and everything else are not."""
    tok = AutoTokenizer.from_pretrained(_smollm2_folder())
    text = render(MULTI_TURN[1:], tok)
    system = text[:text.index("<|im_start|>user")]  # the default system turn the template injects
    assert "system" in system
    segments = [(system, 0)]
    for m in MULTI_TURN[1:]:
        segments += [(f"<|im_start|>{m.role}\n", 0), (f"{m.content}<|im_end|>", int(m.role == "assistant")),
                     ("\n", 0)]
    assert "".join(t for t, _ in segments) == text
    ids, mask = encode_chat(MULTI_TURN[1:], tok)
    assert (ids, mask) == _expected(segments, tok)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Fine, thanks.<|im_end|>It is 4.<|im_end|>"


def test_template_that_rewrites_earlier_turns_is_refused():
    """A template that marks the last turn renders a prefix differently inside the whole chat: refused, since
    the spans would be wrong."""
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %} [SEP]{% endif %} {% endfor %}"
    with pytest.raises(ConfigError, match=r"data.records: the model's chat template renders a chat's first 1 turn\(s\)"):
        encode_chat(MULTI_TURN[1:3], tok)


def test_a_template_that_refuses_a_chat_is_a_config_error():
    """Llama-2-style templates raise on turns that do not alternate: one line naming the chat, not a traceback."""
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    tok.chat_template = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                         "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
                         "{{ m['content'] }} [SEP] {% endfor %}")
    with pytest.raises(ConfigError) as err:
        encode_chat((Message("user", "Hello there"), Message("user", "again")), tok)
    assert err.value.key == "data.records" and "opens 'Hello there'" in str(err.value)
    assert "roles must alternate" in str(err.value) and "\n" not in str(err.value)


def test_an_opening_assistant_turn_is_scored(wordpiece):
    """A chat that opens with the assistant's greeting has no prefix to render: its content is located instead."""
    chat = (Message("assistant", "Welcome!"), Message("user", "Hi"), Message("assistant", "How can I help?"))
    ids, mask = encode_chat(chat, wordpiece)
    expected = _expected([("assistant : ", 0), ("Welcome! [SEP]", 1), (" user : Hi [SEP] assistant : ", 0),
                          ("How can I help? [SEP]", 1), (" ", 0)], wordpiece)
    assert (ids, mask) == expected


def test_chat_tensors_mask_assistant_tokens_and_truncation_is_logged(wordpiece, caplog):
    chats = _chats(4)
    data = TextDataset(chats, None, ("g",) * 4, chat=True)
    with caplog.at_level(logging.WARNING):
        full = tokenize(data, wordpiece, max_length=32)
        cut = tokenize(data, wordpiece, max_length=8)  # "user : what is 0 plus 0 ? [SEP]" alone is 9 tokens
    assert len(full.tensors) == len(FIELDS)
    input_ids, attention, _, loss_mask = full.tensors
    for row, chat in enumerate(chats):
        ids, mask = encode_chat(chat, wordpiece)
        assert input_ids[row, :len(ids)].tolist() == ids and loss_mask[row, :len(ids)].tolist() == mask
        assert attention[row].sum() == len(ids) and loss_mask[row, len(ids):].sum() == 0
    assert cut.tensors[3].sum() == 0
    assert "4 of 4 chats lose all their assistant tokens to truncation at data.max_length=8" in caplog.text


def _chat_batch(tok) -> dict[str, torch.Tensor]:
    data = TextDataset(_chats(3), None, ("g",) * 3, chat=True)
    return as_batch(tokenize(data, tok, max_length=48).tensors)


def test_loss_and_gradient_ignore_non_assistant_targets(wordpiece):
    """Target t+1 counts exactly when loss_mask[t+1] is 1, and each example's loss is its own."""
    batch = _chat_batch(wordpiece)
    assert "loss_mask" not in model_inputs(batch)
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, 50, requires_grad=True)
    batch["input_ids"] = batch["input_ids"] % 50  # targets within the toy vocabulary
    loss = loss_from_logits(logits, batch, Task.CAUSAL_LM)
    loss.sum().backward()
    scored = batch["loss_mask"][:, 1:].bool()
    moved = logits.grad[:, :-1].abs().sum(dim=-1) > 0
    assert torch.equal(moved, scored) and scored.any()
    assert torch.equal(token_counts(batch, Task.CAUSAL_LM), scored.sum(dim=1).float())

    other = dict(batch)  # every non-assistant target replaced, and example 1's logits too: example 0 unchanged
    other["input_ids"] = torch.where(batch["loss_mask"].bool(), batch["input_ids"], (batch["input_ids"] + 7) % 50)
    changed = logits.detach().clone()
    changed[1] += 1.0
    again = loss_from_logits(changed, other, Task.CAUSAL_LM)
    assert torch.equal(again[0], loss[0].detach()) and torch.equal(again[2], loss[2].detach())


def test_text_loss_is_unchanged_by_the_loss_mask(wordpiece):
    """Texts: loss_mask is the attention mask, so the loss is bit-identical to the attention-mask loss of
    before."""
    data = TextDataset(("a short text", "a somewhat longer text than the first one"), None, ("g", "g"))
    batch = as_batch(tokenize(data, wordpiece, max_length=16).tensors)
    assert torch.equal(batch["loss_mask"], batch["attention_mask"])
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, len(wordpiece))
    mask = batch["attention_mask"][:, 1:].float()
    token_loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   batch["input_ids"][:, 1:].reshape(-1), reduction="none")
    before = (token_loss.view_as(mask) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    assert torch.equal(loss_from_logits(logits, batch, Task.CAUSAL_LM), before)
    assert torch.equal(token_counts(batch, Task.CAUSAL_LM), mask.sum(dim=1))


def _chat_run(monkeypatch, tiny_causal, template: str | None, *overrides: str):
    chats = _chats(40)
    monkeypatch.setattr(setup, "load_data", lambda data: TextDataset(
        chats, None, tuple(f"g{i % 2}" for i in range(40)), chat=True))
    real = setup.load_model

    def with_template(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.tokenizer.chat_template = template
        return loaded

    monkeypatch.setattr(setup, "load_model", with_template)
    return tiny_causal("data.records=chat", "data.max_examples=0", "partition.scheme=iid",
                       "partition.num_clients=2", "training.batch_size=8", *overrides)


def test_a_tokenizer_without_chat_template_is_a_config_error(monkeypatch, tiny_causal):
    cfg = _chat_run(monkeypatch, tiny_causal, None)
    with pytest.raises(ConfigError) as error:
        setup.build_federation(cfg)
    assert error.value.key == "data.records" and "tiny_llama" in str(error.value)
    assert "\n" not in str(error.value)


def test_chat_run_writes_each_rounds_generations(monkeypatch, tiny_causal, tmp_path):
    """tiny_llama with LoRA under DP, 1 round of 1 step: generations.jsonl holds the round's greedy answers to
    the first held-out chats, and results.json carries them."""
    cfg = _chat_run(monkeypatch, tiny_causal, TEMPLATE, "model.regime=lora", "privacy.mode=fixed_noise",
                    "training.rounds=1", "training.local_steps=1", "evaluation.generations=2",
                    "evaluation.max_new_tokens=4")
    fed = setup.build_federation(cfg)
    expected = [last_exchange(c) for c in fed.test_chats[:2]]
    res = privfed.run(cfg, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / GENERATIONS).read_text().splitlines()]
    assert [(g["round"], g["prompt"], g["reference"]) for g in lines] == \
        [(1, e.question, e.reference) for e in expected]
    assert all(g["generated"] for g in lines)
    assert res["generations"] == lines
    assert res["final"]["perplexity_over"] == "assistant tokens"
    assert res["rounds"][0]["clients_trained"] == 2


def test_a_round_redone_after_resume_replaces_its_generations(tmp_path):
    run_dir = RunDirectory(tmp_path)
    run_dir.save_generations(1, [{"round": 1, "generated": "a"}])
    run_dir.save_generations(2, [{"round": 2, "generated": "b"}])
    run_dir.save_generations(2, [{"round": 2, "generated": "c"}])
    assert run_dir.generations() == [{"round": 1, "generated": "a"}, {"round": 2, "generated": "c"}]
    assert run_dir.last_generations() == [{"round": 2, "generated": "c"}]


def test_cli_trains_a_local_chat_model_folder_on_a_jsonl_of_chats(tmp_path, capsys):
    """The issue's command shape: a local model folder (a tiny LLaMA saved with a tokenizer that has a chat
    template) and a JSONL of chat records; the CLI prints what the model answers and writes generations.jsonl."""
    from transformers import LlamaForCausalLM

    from privfed.cli import main
    from privfed.models.sources import tiny_llama_config

    folder = tmp_path / "my-chat-llama"
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)  # the chat template travels with the tokenizer files
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": m.role, "content": m.content} for m in chat]}) + "\n"
                            for chat in _chats(24)))
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "--no-progress", "--set", f"model.source={folder}",
                 "--set", f"data.source={data}", "--set", "data.records=chat", "--set", "partition.scheme=iid",
                 "--set", "partition.num_clients=2", "--set", "data.max_length=32", "--set", "training.rounds=1",
                 "--set", "training.local_steps=1", "--set", "training.batch_size=4", "--set", "privacy.mode=off",
                 "--set", "evaluation.generations=2", "--set", "evaluation.max_new_tokens=4"])
    printed = capsys.readouterr().out
    assert code == 0 and "## What the model answers after round 1" in printed and "generations.jsonl" in printed
    assert len((out / GENERATIONS).read_text().splitlines()) == 2
    assert json.loads((out / "results.json").read_text())["final"]["perplexity_over"] == "assistant tokens"
