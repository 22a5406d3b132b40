"""Localized copy: every template in every locale, fallbacks, personalisation."""

from __future__ import annotations

import pytest

from engine.triggers.intent import Offer
from engine.triggers.templates import (
    CATALOG,
    LOCALES,
    TEMPLATE_IDS,
    normalize_locale,
    render,
)


@pytest.mark.parametrize("locale", ["en", "de", "fr", "es", "ja", "zh"])
@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_every_template_in_every_locale(template_id: str, locale: str) -> None:
    r = render(
        template_id,
        locale,
        first_name="Mia",
        categories=("X-Cat",),
        offer=Offer(15, True, "CODE15"),
    )
    assert r.locale == locale and not r.fallback
    assert r.subject and "{" not in r.subject + r.body
    assert "Mia" in r.body and "15" in r.body and "CODE15" in r.body
    if "{categories}" in CATALOG[locale].templates[template_id][1]:
        assert "X-Cat" in r.body


def test_catalog_complete() -> None:
    assert set(LOCALES) == {"en", "de", "fr", "es", "ja", "zh"}
    for copy in CATALOG.values():
        assert set(copy.templates) == set(TEMPLATE_IDS)


def test_japanese_is_polite() -> None:
    r = render("dormancy_1", "ja-JP", first_name="花子", offer=Offer(10))
    assert r.body.startswith("花子様")
    assert "ます" in r.body and "10%オフ" in r.body
    assert render("risk", "ja").body.startswith("お客様")


def test_chinese_and_german_forms() -> None:
    assert render("risk", "zh-CN", first_name="小明").body.startswith("小明，您好")
    de = render("dormancy_1", "de")
    assert "Sie" in de.subject and "Ihnen" in de.body


def test_region_falls_back_to_language_without_counting() -> None:
    r = render("risk", "fr_CA")
    assert (r.locale, r.fallback) == ("fr", False)


def test_missing_language_falls_back_to_english_and_is_flagged() -> None:
    r = render("abandoned_cart", "pt-BR", first_name="Ana")
    assert (r.locale, r.fallback) == ("en", True)
    assert r.body.startswith("Hi Ana,")


def test_missing_single_translation_falls_back() -> None:
    partial = dict(CATALOG)
    de = CATALOG["de"]
    partial["de"] = type(de)(
        **{**de.__dict__, "templates": {k: v for k, v in de.templates.items() if k != "risk"}}
    )
    r = render("risk", "de-DE", catalog=partial)
    assert (r.locale, r.fallback) == ("en", True)
    assert render("dormancy_1", "de-DE", catalog=partial).fallback is False


def test_unknown_template() -> None:
    with pytest.raises(KeyError):
        render("nope", "en")


def test_no_name_no_categories_no_offer() -> None:
    r = render("dormancy_3", None, first_name="  ")
    assert r.body.startswith("Hi there,")
    assert "our latest collection" in r.body
    assert "Enjoy" not in r.body


def test_customer_text_is_not_a_format_string() -> None:
    r = render("risk", "en", first_name="{offer}", categories=("{0}",))
    assert "Hi {offer}," in r.body and "{0}" in r.body


def test_offer_text() -> None:
    assert "Enjoy free shipping on" in render("risk", "en", offer=Offer(free_shipping=True)).body
    body = render("risk", "en", offer=Offer(20, True)).body
    assert "Enjoy 20% off and free shipping on your next order." in body


def test_normalize_locale() -> None:
    assert normalize_locale("de_at") == "de-AT"
    assert normalize_locale("zh-hant-tw") == "zh-Hant-TW"
    assert normalize_locale("") == "en"
