"""Language → encoder space.

A pure function of settings: the CN-Celeb encoder serves the configured East/South-East Asian
languages, the VoxCeleb encoder everything else. Kept separate from the models so the table can be
tested and changed without loading anything.
"""

from __future__ import annotations

from service.settings import SPACE_CNCELEB, SPACE_VOXCELEB

# Codes a caller might reasonably send that the VoxLingua107 label set spells differently.
LANGUAGE_ALIASES = {
    "cmn": "zh",
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "yue": "zh",
    "jp": "ja",
    "kr": "ko",
}


def normalise_language(code: str) -> str:
    """Lower-case, strip a region suffix (``en-US`` → ``en``) unless it is a known alias."""
    lowered = code.strip().lower().replace("_", "-")
    if lowered in LANGUAGE_ALIASES:
        return lowered
    return lowered.split("-", 1)[0]


class LanguageRouter:
    def __init__(self, cnceleb_languages: list[str]) -> None:
        self._cnceleb = {normalise_language(code) for code in cnceleb_languages}
        # An alias listed in the table routes like its canonical code and vice versa.
        self._cnceleb |= {LANGUAGE_ALIASES[c] for c in self._cnceleb if c in LANGUAGE_ALIASES}

    def space_for(self, language: str) -> str:
        code = normalise_language(language)
        if code in self._cnceleb or LANGUAGE_ALIASES.get(code) in self._cnceleb:
            return SPACE_CNCELEB
        return SPACE_VOXCELEB
