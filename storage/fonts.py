"""The CJK font for the PDFs people print (the signed report, the cloud-film sheet).

One lookup for both: a configured file (LANCANG_REPORT_FONT, LANCANG_FILM_FONT) or the
first Debian CJK font installed; in a .ttc collection, the Simplified Chinese face.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)


class FontMissing(RuntimeError):
    """No CJK font is installed or configured."""


def cjk_font(*configured: str, setting: str, error: type[Exception] = FontMissing) -> tuple[str, int]:
    """(path, face index) of the first configured file that exists, else of an installed CJK
    font; `error` names `setting` and the package to install when there is none."""
    for candidate in [c.strip() for c in configured if c and c.strip()] + list(CJK_FONT_CANDIDATES):
        if Path(candidate).is_file():
            return candidate, simplified_chinese_face(candidate)
    raise error("no CJK font for the PDF: install the Debian package fonts-noto-cjk (or fonts-wqy-zenhei), "
                f"or set {setting} to a .ttf/.otf/.ttc file")


@lru_cache(maxsize=8)
def simplified_chinese_face(path: str) -> int:
    """Index of the Simplified Chinese face in a .ttc/.otc collection (0 for single fonts)."""
    if not path.lower().endswith((".ttc", ".otc")):
        return 0
    from fontTools.ttLib import TTCollection  # lazy: only collections need it

    collection = TTCollection(path, lazy=True)
    try:
        for index, font in enumerate(collection.fonts):
            if (font["name"].getDebugName(1) or "").endswith(" SC"):
                return index
    finally:
        collection.close()
    return 0
