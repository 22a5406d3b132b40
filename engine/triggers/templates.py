"""Localized message copy for recall templates.

Copy exists for ``en``, ``de``, ``fr``, ``es``, ``ja`` and ``zh`` (simplified),
in polite register (Sie, vous, usted, です/ます with 様, 您). A locale is
resolved per template as locale → language → ``en``; ``Rendered.fallback`` is
true when the copy is not in the customer's language (a missing translation),
so callers can count it.

>>> r = render("dormancy_2", "de-AT", first_name="Anna", categories=("Schuhe",),
...            offer=Offer(percent_off=10))
>>> r.locale, r.fallback, r.subject
('de', False, 'Etwas Neues für Sie')
>>> print(r.body)
Hallo Anna,
<BLANKLINE>
In Schuhe gibt es frische Neuheiten – und wir haben eine kleine Überraschung für Sie.
<BLANKLINE>
Sichern Sie sich 10 % Rabatt auf Ihre nächste Bestellung.
<BLANKLINE>
Bis bald!
>>> render("risk", "pt-BR").fallback
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.triggers.intent import Offer

__all__ = [
    "CATALOG",
    "LOCALES",
    "TEMPLATE_IDS",
    "LocaleCopy",
    "Rendered",
    "normalize_locale",
    "render",
]

TEMPLATE_IDS: tuple[str, ...] = (
    "dormancy_1",
    "dormancy_2",
    "dormancy_3",
    "risk",
    "abandoned_cart",
    "first_order_followup",
)


@dataclass(frozen=True)
class LocaleCopy:
    greeting: str
    """With ``{name}``."""
    greeting_anon: str
    offer_line: str
    """With ``{offer}`` and ``{code}`` (the rendered ``code`` fragment or "")."""
    code: str
    percent: str
    free_shipping: str
    joiner: str
    """Joins discount and free shipping."""
    list_sep: str
    categories_fallback: str
    signoff: str
    templates: Mapping[str, tuple[str, str]]
    """Template id → (subject, main paragraph with ``{categories}``)."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    locale: str
    """The catalog entry actually used."""
    fallback: bool
    """True when the copy is not in the requested language."""


CATALOG: dict[str, LocaleCopy] = {
    "en": LocaleCopy(
        greeting="Hi {name},",
        greeting_anon="Hi there,",
        offer_line="Enjoy {offer} on your next order.{code}",
        code=" Use code {code} at checkout.",
        percent="{n}% off",
        free_shipping="free shipping",
        joiner=" and ",
        list_sep=", ",
        categories_fallback="our latest collection",
        signoff="See you soon!",
        templates={
            "dormancy_1": (
                "We miss you",
                "It has been a while since your last visit. We have new arrivals in "
                "{categories} that we think you will like.",
            ),
            "dormancy_2": (
                "Something new for you",
                "There are fresh additions in {categories}, and we saved a little "
                "something for you.",
            ),
            "dormancy_3": (
                "One last hello",
                "We would love to see you again. Take a look at what is new in {categories}.",
            ),
            "risk": (
                "Picked for you",
                "We picked a few things in {categories} we think you will love.",
            ),
            "abandoned_cart": (
                "You left something in your cart",
                "Your cart is still waiting for you. Complete your order whenever you are ready.",
            ),
            "first_order_followup": (
                "Thanks for your first order",
                "We hope you are enjoying your purchase. Discover more in {categories}.",
            ),
        },
    ),
    "de": LocaleCopy(
        greeting="Hallo {name},",
        greeting_anon="Guten Tag,",
        offer_line="Sichern Sie sich {offer} auf Ihre nächste Bestellung.{code}",
        code=" Ihr Code an der Kasse: {code}",
        percent="{n} % Rabatt",
        free_shipping="kostenlosen Versand",
        joiner=" und ",
        list_sep=", ",
        categories_fallback="unserer neuen Kollektion",
        signoff="Bis bald!",
        templates={
            "dormancy_1": (
                "Wir vermissen Sie",
                "Ihr letzter Besuch ist schon eine Weile her. In {categories} gibt es "
                "Neuheiten, die Ihnen gefallen könnten.",
            ),
            "dormancy_2": (
                "Etwas Neues für Sie",
                "In {categories} gibt es frische Neuheiten – und wir haben eine kleine "
                "Überraschung für Sie.",
            ),
            "dormancy_3": (
                "Ein letzter Gruß",
                "Wir würden uns freuen, Sie wiederzusehen. Entdecken Sie die Neuheiten "
                "in {categories}.",
            ),
            "risk": (
                "Für Sie ausgewählt",
                "Wir haben in {categories} einige Artikel ausgewählt, die Ihnen gefallen werden.",
            ),
            "abandoned_cart": (
                "Ihr Warenkorb wartet auf Sie",
                "Ihr Warenkorb ist noch für Sie gespeichert. Schließen Sie Ihre Bestellung "
                "ab, wann immer Sie möchten.",
            ),
            "first_order_followup": (
                "Vielen Dank für Ihre erste Bestellung",
                "Wir hoffen, Sie haben Freude an Ihrem Einkauf. Entdecken Sie mehr in "
                "{categories}.",
            ),
        },
    ),
    "fr": LocaleCopy(
        greeting="Bonjour {name},",
        greeting_anon="Bonjour,",
        offer_line="Profitez de {offer} sur votre prochaine commande.{code}",
        code=" Votre code : {code}",
        percent="{n} % de réduction",
        free_shipping="la livraison gratuite",
        joiner=" et de ",
        list_sep=", ",
        categories_fallback="notre nouvelle collection",
        signoff="À bientôt !",
        templates={
            "dormancy_1": (
                "Vous nous manquez",
                "Cela fait un moment depuis votre dernière visite. Découvrez les "
                "nouveautés : {categories}.",
            ),
            "dormancy_2": (
                "Du nouveau pour vous",
                "De nouveaux articles sont arrivés ({categories}), et nous avons une "
                "petite attention pour vous.",
            ),
            "dormancy_3": (
                "Un dernier petit mot",
                "Nous serions ravis de vous revoir. Découvrez les nouveautés : {categories}.",
            ),
            "risk": (
                "Sélectionné pour vous",
                "Nous avons sélectionné pour vous quelques articles qui devraient vous "
                "plaire : {categories}.",
            ),
            "abandoned_cart": (
                "Votre panier vous attend",
                "Votre panier est toujours là. Finalisez votre commande quand vous le souhaitez.",
            ),
            "first_order_followup": (
                "Merci pour votre première commande",
                "Nous espérons que votre achat vous plaît. Découvrez aussi : {categories}.",
            ),
        },
    ),
    "es": LocaleCopy(
        greeting="Hola, {name}:",
        greeting_anon="Hola:",
        offer_line="Disfrute de {offer} en su próximo pedido.{code}",
        code=" Su código: {code}",
        percent="un {n} % de descuento",
        free_shipping="envío gratis",
        joiner=" y ",
        list_sep=", ",
        categories_fallback="nuestra nueva colección",
        signoff="¡Hasta pronto!",
        templates={
            "dormancy_1": (
                "Le echamos de menos",
                "Ha pasado un tiempo desde su última visita. Tenemos novedades en "
                "{categories} que pueden interesarle.",
            ),
            "dormancy_2": (
                "Algo nuevo para usted",
                "Hay novedades en {categories} y le hemos reservado una pequeña sorpresa.",
            ),
            "dormancy_3": (
                "Un último saludo",
                "Nos encantaría volver a verle. Descubra lo nuevo en {categories}.",
            ),
            "risk": (
                "Seleccionado para usted",
                "Hemos seleccionado algunos artículos de {categories} que creemos que le "
                "encantarán.",
            ),
            "abandoned_cart": (
                "Su carrito le espera",
                "Su carrito sigue guardado. Complete su pedido cuando lo desee.",
            ),
            "first_order_followup": (
                "Gracias por su primer pedido",
                "Esperamos que disfrute de su compra. Descubra más en {categories}.",
            ),
        },
    ),
    "ja": LocaleCopy(
        greeting="{name}様",
        greeting_anon="お客様",
        offer_line="次回のご注文で{offer}をご利用いただけます。{code}",
        code="クーポンコード：{code}",
        percent="{n}%オフ",
        free_shipping="送料無料",
        joiner="・",
        list_sep="、",
        categories_fallback="新着コレクション",
        signoff="今後ともよろしくお願いいたします。",
        templates={
            "dormancy_1": (
                "お久しぶりです",
                "しばらくご来店いただいておりませんが、いかがお過ごしでしょうか。"
                "{categories}に新商品が入荷しました。ぜひご覧ください。",
            ),
            "dormancy_2": (
                "新着商品のご案内です",
                "{categories}に新しい商品が届きました。ささやかな特典もご用意しております。",
            ),
            "dormancy_3": (
                "またのご来店をお待ちしております",
                "またお会いできるのを楽しみにしております。{categories}の新着商品をぜひご覧ください。",
            ),
            "risk": (
                "おすすめ商品のご案内です",
                "{categories}の中から、お客様におすすめの商品をお選びしました。",
            ),
            "abandoned_cart": (
                "カートに商品が残っています",
                "カートの商品はそのまま保存されています。ご都合のよいときにご注文を完了してください。",
            ),
            "first_order_followup": (
                "初めてのご注文ありがとうございます",
                "お買い上げいただいた商品をお楽しみいただけていますでしょうか。"
                "{categories}の商品もぜひご覧ください。",
            ),
        },
    ),
    "zh": LocaleCopy(
        greeting="{name}，您好：",
        greeting_anon="尊敬的顾客，您好：",
        offer_line="您下次下单可享{offer}。{code}",
        code="优惠码：{code}",
        percent="{n}%折扣",
        free_shipping="免运费",
        joiner="及",
        list_sep="、",
        categories_fallback="最新系列",
        signoff="祝您购物愉快！",
        templates={
            "dormancy_1": (
                "好久不见",
                "距离您上次光临已经有一段时间了。{categories}上新了，欢迎选购。",
            ),
            "dormancy_2": (
                "为您准备的新品",
                "{categories}有新品到货，我们还为您准备了一份小礼物。",
            ),
            "dormancy_3": (
                "期待再次见到您",
                "我们期待您的再次光临。欢迎看看{categories}的新品。",
            ),
            "risk": ("为您精选", "我们从{categories}中为您精选了几件商品。"),
            "abandoned_cart": (
                "您的购物车还有商品",
                "您购物车中的商品已为您保留，您可以随时完成下单。",
            ),
            "first_order_followup": (
                "感谢您的首次订购",
                "希望您喜欢所购商品。欢迎在{categories}中发现更多好物。",
            ),
        },
    ),
}

LOCALES: tuple[str, ...] = tuple(CATALOG)


def normalize_locale(locale: str | None) -> str:
    """``de_at`` → ``de-AT``; empty → ``en``."""
    if not locale:
        return "en"
    parts = locale.replace("_", "-").split("-")
    lang = parts[0].lower()
    rest = [p.upper() if len(p) == 2 else p.title() for p in parts[1:] if p]
    return "-".join([lang, *rest])


def _candidates(locale: str) -> list[str]:
    norm = normalize_locale(locale)
    parts = norm.split("-")
    out = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    if "en" not in out:
        out.append("en")
    return out


def _offer_text(copy: LocaleCopy, offer: Offer) -> str:
    parts = [copy.percent.format(n=offer.percent_off)] if offer.percent_off > 0 else []
    if offer.free_shipping:
        parts.append(copy.free_shipping)
    return copy.joiner.join(parts)


def render(
    template_id: str,
    locale: str | None,
    *,
    first_name: str | None = None,
    categories: Sequence[str] = (),
    offer: Offer | None = None,
    catalog: Mapping[str, LocaleCopy] | None = None,
) -> Rendered:
    """Subject and body of ``template_id`` for ``locale``.

    Raises ``KeyError`` if no catalog entry (not even ``en``) has the template.
    Customer data is substituted as values, never parsed as format strings.
    """
    catalog = CATALOG if catalog is None else catalog
    wanted = normalize_locale(locale)
    for key in _candidates(wanted):
        copy = catalog.get(key)
        if copy is not None and template_id in copy.templates:
            break
    else:
        raise KeyError(f"no copy for template {template_id!r}")
    subject, main = copy.templates[template_id]
    name = (first_name or "").strip()
    cats = [c.strip() for c in categories if c and c.strip()][:3]
    lines = [
        copy.greeting.format(name=name) if name else copy.greeting_anon,
        main.format(categories=copy.list_sep.join(cats) or copy.categories_fallback),
    ]
    if offer:
        code = copy.code.format(code=offer.code) if offer.code else ""
        lines.append(copy.offer_line.format(offer=_offer_text(copy, offer), code=code))
    lines.append(copy.signoff)
    fallback = key.split("-")[0] != wanted.split("-")[0]
    return Rendered(subject=subject, body="\n\n".join(lines), locale=key, fallback=fallback)
