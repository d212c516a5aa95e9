"""Language → encoder space.

A pure function of settings: the CN-Celeb encoder serves the configured East/South-East Asian
languages, the VoxCeleb encoder everything else. Kept separate from the models so the table can be
tested and changed without loading anything.
"""

from __future__ import annotations

from service.core.settings import SPACE_CNCELEB, SPACE_VOXCELEB

# Codes a caller might reasonably send that the VoxLingua107 label set spells differently. Cantonese
# ("yue") is a language of its own, not an alias: it is routed by the default table instead.
LANGUAGE_ALIASES = {
    "cmn": "zh",
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hk": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "jp": "ja",
    "kr": "ko",
}


def normalise_language(code: str) -> str:
    """Canonical lower-case code: ``en-US`` → ``en``, ``zh-CN`` / ``cmn-Hans`` → ``zh``."""
    lowered = code.strip().lower().replace("_", "-")
    if lowered in LANGUAGE_ALIASES:
        return LANGUAGE_ALIASES[lowered]
    primary = lowered.split("-", 1)[0]
    return LANGUAGE_ALIASES.get(primary, primary)


class LanguageRouter:
    def __init__(self, cnceleb_languages: list[str]) -> None:
        self._cnceleb = {normalise_language(code) for code in cnceleb_languages}

    def space_for(self, language: str) -> str:
        if normalise_language(language) in self._cnceleb:
            return SPACE_CNCELEB
        return SPACE_VOXCELEB
