"""Turning an LLM's free-text answer into one of a game's action labels.

Tagged answers (``<action>Paper</action>``) are the contract the prompts ask for, as in GTBench;
small or chatty models break it, so the parser falls back, in order, to ``action: Paper``, to an
answer that is just a label, and (for one-answer questions) to the only label the text names.
The *last* match wins, because models often restate the options before answering.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["parse_choice", "tagged", "invalid_answer_feedback"]

_STRIP = " \t\r\n.,;:!?\"'`*()[]{}"


def _label_index(text: str, labels: Sequence[str]) -> int | None:
    """Index of the label that `text` is (case-insensitive, 'Option X' and quotes allowed)."""
    t = text.strip().strip(_STRIP)
    t = re.sub(r"^(?:option|action)\s+", "", t, flags=re.IGNORECASE).strip(_STRIP)
    low = t.lower()
    for i, label in enumerate(labels):
        if low == label.lower():
            return i
    return None


def _alternation(labels: Sequence[str]) -> str:
    # Longest first, so 'Defect' is not read as a shorter label that prefixes it.
    return "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))


def parse_choice(
    text: str | None, tag: str, labels: Sequence[str], *, lenient: bool = True
) -> int | None:
    """Index into `labels` named by `text` for the answer field `tag`, or None if unparseable.

    lenient: also accept an answer that names exactly one label anywhere (only safe when the
    question asks for one field; a joint prediction+action answer names two).
    """
    if not text:
        return None
    tag_re = re.escape(tag)
    # 1. <tag>Label</tag>: the last well-formed one wins; a wrong label inside is not an answer.
    found = re.findall(rf"<\s*{tag_re}\s*>(.*?)<\s*/\s*{tag_re}\s*>", text, re.I | re.S)
    for inner in reversed(found):
        idx = _label_index(inner, labels)
        if idx is not None:
            return idx
    if found:
        return None
    alt = _alternation(labels)
    # 2. an unclosed tag or "tag: Label" / "tag = Label" / "**Tag**: Label".
    pattern = rf"(?:<\s*{tag_re}\s*>|\b{tag_re}\b\W{{0,4}}[:=])\s*(?:option\s+)?[\"'`*]*({alt})\b"
    hits = re.findall(pattern, text, re.I)
    if hits:
        return _label_index(hits[-1], labels)
    # 3. the whole answer is a label.
    idx = _label_index(text, labels)
    if idx is not None or not lenient:
        return idx
    # 4. exactly one distinct label is named as a word.
    named = {m.lower() for m in re.findall(rf"(?<![\w-])({alt})(?![\w-])", text, re.I)}
    if len(named) == 1:
        return _label_index(named.pop(), labels)
    return None


def tagged(tag: str, label: str) -> str:
    """The canonical answer ``<tag>label</tag>``."""
    return f"<{tag}>{label}</{tag}>"


def invalid_answer_feedback(tags: Sequence[str], labels: Sequence[Sequence[str]]) -> str:
    """What a re-ask says after an unparseable answer (TextArena style: name the format)."""
    names = "XYZ"
    fmt = "".join(tagged(t, names[k]) for k, t in enumerate(tags))
    valid = "; ".join(
        f"{names[k]} is exactly one of: {', '.join(ls)}" for k, ls in enumerate(labels)
    )
    return f"Your answer could not be read. Reply with {fmt}, where {valid}."
