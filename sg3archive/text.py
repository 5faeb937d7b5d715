"""Text from archives, made safe to print on a terminal.

Names, reasons and messages in an archive are untrusted: a name can hold terminal escape
sequences (ESC ``]0;…`` retitles the window, ESC ``[2J`` clears it), line breaks that forge extra
output lines, bidi controls that show a name reversed, or lone surrogates (names that are not
UTF-8, read with ``surrogateescape``) that cannot even be encoded. :func:`printable` writes each
such character as a Python escape (``\\x1b``, ``\\n``, ``\\u202e``, ``\\udcff``) and keeps every
other character, ordinary Unicode included (``é``, ``日本``, emoji).
"""

from __future__ import annotations

# C0 controls and DEL, C1 controls, lone surrogates, the line and paragraph separators, and the
# bidirectional formatting characters (ALM, LRM, RLM, LRE..RLO, LRI..PDI).
_ESCAPED = [
    *range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000), 0x2028, 0x2029,
    0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
]
_TABLE = {code: repr(chr(code))[1:-1] for code in _ESCAPED}


def printable(text: object) -> str:
    """``str(text)`` with control, bidi and line-separator characters and lone surrogates
    written as escapes, so that printing it shows the text and cannot drive the terminal."""
    return str(text).translate(_TABLE)
