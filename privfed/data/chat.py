"""Chats rendered with the tokenizer's chat template, and which of their tokens the assistant wrote.

Instruction tuning scores the assistant's tokens only: the user's turns and the template's markup are context the
model reads, not text it should learn to write. Many templates (SmolLM2's among them) have no ``{% generation %}``
tags to say where the assistant speaks, so the spans are found by rendering prefixes of the chat: assistant turn
``i`` starts where ``messages[:i]`` rendered with the generation prompt ends, and ends where ``messages[:i + 1]``
rendered ends. Each prefix must be a string prefix of the whole rendering (true of ChatML, Llama and most
templates); a template that renders a chat's beginning differently inside the whole chat is refused, because the
spans would be wrong.

An assistant span keeps the turn's end marker (``<|im_end|>`` for ChatML) so the model learns to stop, but not the
whitespace the template writes after it (the convention of ``{% generation %}`` tags). Character spans become
token positions through the fast tokenizer's offset mapping; a token that straddles a span's edge counts as the
assistant's. A chat that opens with an assistant turn (a greeting) has no prefix to render: that turn's span
starts where its content first appears in the rendering.
"""
from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from privfed.data.records import Chat
from privfed.errors import ConfigError

ASSISTANT = "assistant"
USER = "user"

Span = tuple[int, int]  # [start, end) in characters of the rendering


@dataclass(frozen=True)
class RenderedChat:
    """A chat as its template writes it, with the character spans of the assistant's turns."""

    text: str
    assistant_spans: tuple[Span, ...]


@dataclass(frozen=True)
class Exchange:
    """A chat cut before its last assistant turn: the ``context`` the model answers, and that turn's text."""

    context: Chat
    reference: str

    @property
    def question(self) -> str:
        """The last user turn of the context ("" when there is none)."""
        return next((m.content for m in reversed(self.context) if m.role == USER), "")


def require_chat_template(tokenizer: PreTrainedTokenizerBase, model_source: str) -> None:
    """Chat records need a chat template and a fast tokenizer (for offsets); say so before any client trains."""
    if not tokenizer.chat_template:
        raise ConfigError("data.records", f"chat records are rendered with the model's chat template, but "
                                          f"{model_source}'s tokenizer has none; use a chat model or records text")
    if not tokenizer.is_fast:
        raise ConfigError("data.records", f"chat records need a fast tokenizer (for token offsets); {model_source}'s "
                                          f"is {type(tokenizer).__name__}")


def render(chat: Chat, tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool = False) -> str:
    """The chat as the template writes it (special tokens included, as text).

    A template may refuse a chat (Llama-2's and Mistral's demand alternating user/assistant turns, Gemma's refuses
    a system turn): that is a one-line error naming the chat, before any client trains.
    """
    messages = [{"role": m.role, "content": m.content} for m in chat]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (ValueError, TemplateError) as error:
        opening = " ".join(chat[0].content.split())[:40] if chat else ""
        raise ConfigError("data.records", f"the model's chat template refuses the chat that opens {opening!r} "
                                          f"({' '.join(str(error).split())})") from None


def render_with_spans(chat: Chat, tokenizer: PreTrainedTokenizerBase) -> RenderedChat:
    """The rendering and the character spans of every assistant turn (its content and end marker)."""
    text = render(chat, tokenizer)
    spans = []
    for i, message in enumerate(chat):
        if message.role != ASSISTANT:
            continue
        if i == 0:  # an opening assistant turn (a greeting): no prefix to render; its content's first appearance
            start = text.find(message.content) if message.content else -1
            if start < 0:
                raise ConfigError("data.records", "the model's chat template does not write an opening assistant "
                                                  "turn verbatim, so its tokens cannot be located; start the chat "
                                                  "with a system or user turn")
        else:
            start = _prefix_end(render(chat[:i], tokenizer, add_generation_prompt=True), text, i)
        end = _prefix_end(render(chat[:i + 1], tokenizer), text, i + 1)
        spans.append((start, start + len(text[start:end].rstrip())))  # not the whitespace after the end marker
    return RenderedChat(text, tuple(spans))


def _prefix_end(prefix: str, text: str, turns: int) -> int:
    """Where ``prefix`` ends in ``text``, once it is checked to be a string prefix of it."""
    if not text.startswith(prefix):
        raise ConfigError("data.records", f"the model's chat template renders a chat's first {turns} turn(s) "
                                          "differently inside the whole chat, so its assistant tokens cannot be "
                                          "located; use another chat model or records text")
    return len(prefix)


def encode_chat(chat: Chat, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and its assistant mask (1 on the assistant's tokens), untruncated.

    No special tokens are added: the template writes its own.
    """
    rendered = render_with_spans(chat, tokenizer)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s < end and max(e, s + 1) > start for start, end in rendered.assistant_spans))
            for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def last_exchange(chat: Chat) -> Exchange | None:
    """The chat cut before its last assistant turn (None when no assistant speaks)."""
    last = next((i for i in range(len(chat) - 1, -1, -1) if chat[i].role == ASSISTANT), None)
    return None if last is None else Exchange(chat[:last], chat[last].content)
