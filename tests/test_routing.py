"""Language → encoder space (service/pipeline/language.py): a pure table, no models needed."""

from __future__ import annotations

import pytest

from service.core.settings import DEFAULT_CNCELEB_LANGUAGES, SPACE_CNCELEB, SPACE_VOXCELEB, Settings
from service.pipeline.language import LANGUAGE_ALIASES, LanguageRouter, normalise_language
from tests.paths import FIXTURES_DIR


@pytest.fixture(scope="module")
def router() -> LanguageRouter:
    return LanguageRouter(Settings(_env_file=None).cnceleb_languages)


@pytest.mark.parametrize(
    "language",
    [
        *DEFAULT_CNCELEB_LANGUAGES,
        # region / script subtags, any case, "_" or "-"
        "zh-CN",
        "zh_TW",
        "zh-HK",
        "zh-Hans",
        "zh-Hant-TW",
        "zh-Hans-CN",
        "cmn-Hans-CN",
        "yue-HK",
        "ja-JP",
        "ko-KR",
        "th-TH",
        "vi-VN",
        "ZH",
        " zh ",
        # informal aliases
        "jp",
        "kr",
    ],
)
def test_east_and_south_east_asian_languages_go_to_cnceleb(
    router: LanguageRouter, language: str
) -> None:
    assert router.space_for(language) == SPACE_CNCELEB


@pytest.mark.parametrize(
    "language",
    ["en", "en-US", "en_GB", "EN", "fr", "fr-CA", "de", "de-AT", "es-419", "ru", "ar", "hi", "id"],
)
def test_other_languages_go_to_voxceleb(router: LanguageRouter, language: str) -> None:
    assert router.space_for(language) == SPACE_VOXCELEB


@pytest.mark.parametrize("language", ["", "   ", "xx", "klingon", "-", "zz-ZZ"])
def test_unknown_or_empty_codes_default_to_voxceleb(router: LanguageRouter, language: str) -> None:
    assert router.space_for(language) == SPACE_VOXCELEB


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("en-US", "en"),
        ("EN_us", "en"),
        (" fr ", "fr"),
        ("zh-Hans-CN", "zh"),
        ("zh-CN", "zh"),  # aliases become the code the language-ID model emits
        ("cmn", "zh"),
        ("cmn-Hans", "zh"),
        ("jp", "ja"),
        ("yue", "yue"),  # Cantonese is its own language, routed by the table
        ("de", "de"),
    ],
)
def test_normalise_language(code: str, expected: str) -> None:
    assert normalise_language(code) == expected


def test_every_alias_routes_like_its_canonical_code(router: LanguageRouter) -> None:
    for alias, canonical in LANGUAGE_ALIASES.items():
        assert router.space_for(alias) == router.space_for(canonical), alias
        assert router.space_for(alias.upper()) == router.space_for(canonical), alias


@pytest.mark.parametrize(
    ("configured", "cnceleb", "voxceleb"),
    [
        (["zh"], ["zh", "cmn", "zh-CN", "zh-TW"], ["ja", "jp", "ko", "en", "yue"]),
        (["cmn"], ["zh", "cmn", "zh-Hans"], ["ja", "ko"]),
        (["zh-CN"], ["zh", "cmn", "zh-cn"], ["ja"]),
        (["JA"], ["ja", "jp", "ja-JP"], ["zh", "ko"]),
        (["jp"], ["ja", "jp"], ["zh"]),
        ([" ko "], ["ko", "kr", "ko-KR"], ["zh", "ja"]),
        ([], [], ["zh", "ja", "ko", "en"]),
    ],
)
def test_configured_list_is_normalised(
    configured: list[str], cnceleb: list[str], voxceleb: list[str]
) -> None:
    router = LanguageRouter(configured)
    for language in cnceleb:
        assert router.space_for(language) == SPACE_CNCELEB, (configured, language)
    for language in voxceleb:
        assert router.space_for(language) == SPACE_VOXCELEB, (configured, language)


def test_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICESEARCH_CNCELEB_LANGUAGES", "ZH, ja")
    router = LanguageRouter(Settings(_env_file=None).cnceleb_languages)
    assert router.space_for("zh-TW") == SPACE_CNCELEB
    assert router.space_for("ja") == SPACE_CNCELEB
    assert router.space_for("ko") == SPACE_VOXCELEB


def test_voxlingua_codes_route_as_expected(router: LanguageRouter) -> None:
    """Every code the language-ID model can emit gets a space; exactly the CJK+TH+VI ones (the
    default list, as VoxLingua107 spells them; it has no "yue") go to CN-Celeb."""
    lines = (FIXTURES_DIR / "voxlingua107" / "label_encoder.txt").read_text().splitlines()
    codes = [line.split(":", 1)[0].strip("'") for line in lines if "=>" in line and ":" in line]
    assert len(codes) == 107
    routed = {code: router.space_for(code) for code in codes}
    assert {c for c, s in routed.items() if s == SPACE_CNCELEB} == {"zh", "ja", "ko", "th", "vi"}
