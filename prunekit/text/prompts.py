"""Prompt cleaning: the user's words without the chat template around them.

A prompt that reaches a pruner is often a whole chat: a system prompt, role
markers (``USER:``, ``<|im_start|>user``, ``[INST]``), special tokens
(``<image>``, ``<|image_pad|>``) and evaluation boilerplate ("Answer the
question using a single word or phrase."). None of it names anything in the
image, so :func:`clean_prompt` removes it before any noun extraction.

Example::

    >>> clean_prompt("USER: <image> What is on the plate? ASSISTANT: A cake.")
    'What is on the plate?'
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["clean_prompt"]


def require_str(prompt: Any) -> str:
    """``prompt`` itself; a ``TypeError`` naming it when it is not a ``str``."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return prompt


_ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}
_ROLE_PATTERNS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"<\|im_start\|>\s*(system|user|assistant)\b", re.I), None),
    (
        re.compile(r"<\|start_header_id\|>\s*(system|user|assistant)\s*<\|end_header_id\|>", re.I),
        None,
    ),
    (re.compile(r"<start_of_turn>\s*(user|model)\b", re.I), None),
    (re.compile(r"<\|(system|user|assistant)\|>", re.I), None),
    (re.compile(r"\[INST\]"), "user"),
    (re.compile(r"\[/INST\]"), "assistant"),
    (re.compile(r"<<SYS>>"), "system"),
    (re.compile(r"<</SYS>>"), "user"),
    # "USER:", "### Human:", "Assistant:" after a boundary (start, whitespace, a tag).
    (
        re.compile(
            r"(?<![^\s>\]|])(?:###\s*)?(USER|User|HUMAN|Human|ASSISTANT|Assistant|GPT|"
            r"SYSTEM|System|BOT|Bot|MODEL|Model)\s*:"
        ),
        None,
    ),
    # lower-case role labels only at the start of a line
    (re.compile(r"(?m)^[ \t]*(?:###\s*)?(user|human|assistant|gpt|system)\s*:"), None),
)
_SPECIAL_TOKENS = re.compile(
    r"<\|[^<>|]{0,64}\|>"  # <|im_end|>, <|image_pad|>, <|eot_id|>
    r"|</?[A-Za-z_][\w\-.:]{0,40}(?:\s+\d{1,3})?\s*/?>"  # <image>, </s>, <image 1>, <Img>
    r"|\[/?(?:INST|IMG[A-Z_]*|SYS)\]|<</?SYS>>"  # [INST], [IMG_BREAK], <<SYS>>
)
_BOILERPLATE = re.compile(
    "|".join(
        [
            r"answer the question using a single word or (?:a )?phrase\.?",
            r"answer with the option['’]?s letter from the given choices directly\.?",
            r"(?:please )?answer (?:the question )?(?:with )?(?:yes or no|a single word)\.?",
            r"(?:please )?(?:answer|respond) (?:in|with) (?:a |one )?(?:single |short )?"
            r"(?:word|phrase|sentence|number)s?(?: or (?:a )?(?:short )?phrase)?\.?",
            r"reference ocr tokens?:[^\n]*",
            r"(?:please )?answer the question and provide the correct option letter[^\n]*",
            r"you are a helpful (?:language and vision )?assistant[^.\n]*\.?",
        ]
    ),
    re.I,
)
_WHITESPACE = re.compile(r"[ \t\r\f\v]+")


def _role_markers(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for pattern, fixed in _ROLE_PATTERNS:
        for m in pattern.finditer(text):
            role = fixed if fixed is not None else _ROLE_ALIASES[m.group(1).lower()]
            found.append((m.start(), m.end(), role))
    found.sort(key=lambda x: (x[0], -x[1]))
    kept: list[tuple[int, int, str]] = []
    end = -1
    for start, stop, role in found:
        if start >= end:
            kept.append((start, stop, role))
            end = stop
    return kept


def clean_prompt(prompt: str) -> str:
    """Strip chat-template noise from ``prompt`` and keep the user's words.

    When role markers are present (``USER:``/``ASSISTANT:``, ``### Human:``,
    ``<|im_start|>user``, ``[INST] ... [/INST]``, ``<start_of_turn>user``,
    ``<|user|>``, Llama-3 headers, ``<<SYS>>``), only the user turns are kept, so a
    system prompt ("A chat between a curious human and ...") or an assistant
    answer contributes nothing. Special tokens (``<image>``, ``<|image_pad|>``,
    ``</s>``, ``[IMG]``) and common evaluation boilerplate ("Answer the question
    using a single word or phrase.", "Reference OCR token: ...") are removed.
    """
    require_str(prompt)
    text = prompt.replace("\u2019", "'").replace("\u2018", "'")
    markers = _role_markers(text)
    if markers:
        segments: list[tuple[str | None, str]] = [(None, text[: markers[0][0]])]
        for k, (_, stop, role) in enumerate(markers):
            nxt = markers[k + 1][0] if k + 1 < len(markers) else len(text)
            segments.append((role, text[stop:nxt]))
        if any(role == "user" for role, _ in segments):
            parts = [seg for role, seg in segments if role == "user"]
        else:
            parts = [seg for role, seg in segments if role is None]
        text = "\n".join(parts)
    text = _SPECIAL_TOKENS.sub(" ", text)
    text = _BOILERPLATE.sub(" ", text)
    lines = (_WHITESPACE.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
