"""Text from a peer or an agent, made safe to print on an operator's terminal."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (a newline, an escape sequence,
    a lone surrogate from undecodable input) shown as ``?``: a topic or payload cannot
    move the cursor, forge an output line, or fail a strict UTF-8 stdout."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)
