"""Pinyin keys of a patient name, so 张秀英 is found by "zhangxiuying" and by "zxy".

Computed once at ingest (pypinyin's dictionary, the common reading of each character) and
stored beside the name; a search is then an indexed prefix match, not a conversion per row.
"""

from __future__ import annotations

from pypinyin import lazy_pinyin


def keys(ideographic: str, alphabetic: str = "") -> tuple[str, str]:
    """(full pinyin, initials), lower case without spaces: ("zhangxiuying", "zxy"). The
    ideographic group first; many modalities write Chinese into the first (alphabetic) group."""
    text = ideographic or alphabetic
    if text.isascii():
        syllables = [part for part in text.replace("^", " ").replace("=", " ").split() if part]
    else:
        syllables = [s for s in lazy_pinyin("".join(text.replace("^", " ").split()), errors="ignore")
                     if s.isascii() and s.isalpha()]
    full = "".join(syllables).lower()
    initials = "".join(s[0] for s in syllables if s).lower()
    return full[:200], initials[:64]


def query_key(text: str) -> str:
    """What a typed search becomes for the pinyin columns: letters only, lower case."""
    return "".join(ch for ch in text.lower() if "a" <= ch <= "z")
