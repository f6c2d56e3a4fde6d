"""Dutch and English texts of the web pages, and how a request picks its language.

The language comes from ``?lang=`` (which the page then remembers in the ``lang`` cookie), else
the ``lang`` cookie, else the best supported ``Accept-Language`` entry, else Dutch. Problem
``code`` values of the JSON API are translated here too (``problem.<code>``), so the merchant
page can show a refusal in the cashier's language.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from starlette.requests import Request

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "LANG_COOKIE",
    "MESSAGES",
    "accept_language",
    "pick_language",
    "translate",
]

LANGUAGES: Final = ("nl", "en")
DEFAULT_LANGUAGE: Final = "nl"
LANG_COOKIE: Final = "lang"

_NL: dict[str, str] = {
    "app.name": "Stadjerspas",
    "skip": "Naar de inhoud",
    "lang.switch": "Taal",
    "lang.nl": "Nederlands",
    "lang.en": "English",
    "logout": "Uitloggen",
    "login.submit": "Inloggen",
    "login.failed": "Inloggen is niet gelukt. Controleer de gegevens en probeer het opnieuw.",
    "login.locked": "Te vaak verkeerd geprobeerd. Probeer het over een kwartier opnieuw.",
    "csrf.failed": "Het formulier is verlopen. Probeer het opnieuw.",
    "required": "verplicht",
    "holder.login.title": "Inloggen met je Stadjerspas",
    "holder.login.pass_number": "Pasnummer",
    "holder.login.pass_number.hint": "Staat op je pas, bijvoorbeeld GR0000001.",
    "holder.login.pin": "Activeringscode of pincode",
    "holder.login.pin.hint": "Uit de brief van de gemeente.",
    "holder.title": "Mijn Stadjerspas",
    "holder.greeting": "Hallo {name}",
    "holder.qr.title": "Laat deze code scannen",
    "holder.qr.alt": "QR-code van Stadjerspas {pass_number}",
    "holder.qr.hint": "De code vernieuwt zichzelf. Houd je scherm helder en stil voor de camera.",
    "holder.qr.valid_until": "Geldig tot {time}",
    "holder.qr.refreshed": "Nieuwe code geladen.",
    "holder.qr.refresh_failed": "De code kon niet worden vernieuwd. Herlaad de pagina.",
    "holder.blocked": "Deze pas is geblokkeerd. Neem contact op met de gemeente.",
    "holder.balances.title": "Mijn tegoeden",
    "holder.balances.scheme": "Regeling",
    "holder.balances.left": "Over",
    "holder.balances.valid": "Geldig",
    "holder.balances.none": "Je hebt op dit moment geen tegoeden.",
    "holder.offers.title": "Aanbiedingen",
    "holder.offers.none": "Er zijn op dit moment geen aanbiedingen.",
    "holder.offers.discount": "{pct}% korting",
    "holder.history.title": "Geschiedenis",
    "holder.history.none": "Nog niet beschikbaar.",
    "unit.uses": "{n} keer",
    "unit.unlimited": "onbeperkt",
    "valid.always": "altijd",
    "valid.until": "t/m {date}",
    "merchant.login.title": "Inloggen kassa / scanner",
    "merchant.login.terminal": "Terminal-id",
    "merchant.login.secret": "Geheime code",
    "merchant.scan.title": "Pas scannen",
    "merchant.scan.camera": "Camera",
    "merchant.scan.video": "Camerabeeld",
    "merchant.scan.manual": "Code intypen",
    "merchant.scan.manual.label": "Pascode (begint met stadjerspas:1:)",
    "merchant.scan.manual.submit": "Code gebruiken",
    "merchant.scan.again": "Volgende pas scannen",
    "merchant.result.title": "Pas",
    "merchant.result.first_name": "Voornaam",
    "merchant.result.status": "Status",
    "merchant.result.status.active": "Actief",
    "merchant.result.status.blocked": "Geblokkeerd",
    "merchant.result.status.unregistered": "Onbekende pas",
    "merchant.result.nothing": "Niets in te wisselen bij deze partner.",
    "merchant.result.scheme": "Wat wil je afboeken?",
    "merchant.result.left": "Over: {left}",
    "merchant.amount.euro": "Bedrag in euro",
    "merchant.amount.uses": "Aantal keer",
    "merchant.amount.price": "Aankoopbedrag in euro (korting wordt berekend)",
    "merchant.amount.invalid": "Vul een geldig bedrag in.",
    "merchant.redeem": "Afboeken",
    "merchant.redeeming": "Bezig met afboeken…",
    "merchant.ok.title": "Gelukt",
    "merchant.ok.amount": "Afgeboekt: {amount}",
    "merchant.ok.balance": "Nieuw saldo: {balance}",
    "merchant.ok.discount": "Korting: {amount}",
    "merchant.refused.title": "Geweigerd",
    "merchant.reverse": "Laatste afboeking terugdraaien",
    "merchant.reversed": "Teruggedraaid: {amount} terug op de pas. Nieuw saldo: {balance}",
    "merchant.reverse.confirm": "De laatste afboeking terugdraaien?",
    "merchant.error.network": "Geen verbinding met de server. Probeer het opnieuw.",
    "scanner.starting": "Camera wordt gestart…",
    "scanner.scanning": "Camera aan. Houd de QR-code van de pas voor de camera.",
    "scanner.found": "Pascode gelezen.",
    "scanner.stopped": "Camera uit.",
    "scanner.not_a_pass_token": "Deze QR-code is geen Stadjerspas. Scan de QR-code van de pas.",
    "scanner.no_camera": "Geen camera gevonden. Typ de pascode in.",
    "scanner.permission_denied": "Geen toegang tot de camera. Sta de camera toe of typ de code.",
    "scanner.camera_in_use": "De camera is in gebruik door een andere app. Typ de code in.",
    "scanner.insecure_context": "De camera werkt alleen op een beveiligde (https) pagina.",
    "scanner.camera_lost": "De camera is gestopt. Typ de code in of start de camera opnieuw.",
    "scanner.camera_error": "De camera kon niet starten. Typ de pascode in.",
    "problem.default": "Dit kan niet worden verwerkt ({code}).",
    "problem.token_malformed": "Dit is geen geldige pascode.",
    "problem.token_truncated": "De pascode is onvolledig. Scan of typ hem opnieuw.",
    "problem.token_expired": "De pascode is verlopen. Vraag de klant de code te vernieuwen.",
    "problem.token_signer_not_allowed": "Deze pascode is niet door de gemeente uitgegeven.",
    "problem.token_wrong_chain": "Deze pascode hoort bij een ander systeem.",
    "problem.token_wrong_contract": "Deze pascode hoort bij een ander systeem.",
    "problem.token_revoked": "Deze pas is ingetrokken.",
    "problem.pass_blocked": "Deze pas is geblokkeerd.",
    "problem.redemption_pass_blocked": "Deze pas is geblokkeerd.",
    "problem.redemption_amount_over_balance": "Het bedrag is hoger dan het saldo.",
    "problem.redemption_over_cap": "Het bedrag is hoger dan het maximum per keer.",
    "problem.redemption_merchant_not_allowed": "Deze regeling geldt niet bij deze partner.",
    "problem.redemption_scheme_unknown": "Deze regeling bestaat niet.",
    "problem.redemption_not_valid_now": "Deze regeling is nu niet geldig.",
    "problem.reversal_window_closed": "Terugdraaien kan niet meer: de termijn is voorbij.",
    "problem.reversal_already_done": "Deze afboeking is al teruggedraaid.",
    "problem.reversal_unknown_redemption": "Deze afboeking is niet gevonden.",
    "problem.unauthorized": "Je bent niet (meer) ingelogd. Log opnieuw in.",
    "problem.auth_token_expired": "Je sessie is verlopen. Log opnieuw in.",
    "problem.csrf_failed": "De pagina is verlopen. Herlaad de pagina.",
    "problem.receipt_timeout": (
        "Nog geen bevestiging. Probeer het opnieuw (er wordt niet dubbel afgeboekt)."
    ),
    "admin.title": "Beheer",
    "admin.reports": "Rapportages",
    "admin.report.schemes": "Per regeling",
    "admin.report.merchants": "Per partner",
    "admin.report.districts": "Per wijk",
    "admin.format.json": "JSON",
    "admin.format.csv": "CSV",
    "admin.api": "API-documentatie",
}

_EN: dict[str, str] = {
    "app.name": "Stadjerspas",
    "skip": "Skip to content",
    "lang.switch": "Language",
    "lang.nl": "Nederlands",
    "lang.en": "English",
    "logout": "Log out",
    "login.submit": "Log in",
    "login.failed": "Logging in failed. Check the details and try again.",
    "login.locked": "Too many failed attempts. Try again in fifteen minutes.",
    "csrf.failed": "The form expired. Please try again.",
    "required": "required",
    "holder.login.title": "Log in with your Stadjerspas",
    "holder.login.pass_number": "Pass number",
    "holder.login.pass_number.hint": "It is on your pass, for example GR0000001.",
    "holder.login.pin": "Activation code or PIN",
    "holder.login.pin.hint": "From the municipality's letter.",
    "holder.title": "My Stadjerspas",
    "holder.greeting": "Hello {name}",
    "holder.qr.title": "Have this code scanned",
    "holder.qr.alt": "QR code of Stadjerspas {pass_number}",
    "holder.qr.hint": (
        "The code renews itself. Keep your screen bright and still in front of the camera."
    ),
    "holder.qr.valid_until": "Valid until {time}",
    "holder.qr.refreshed": "New code loaded.",
    "holder.qr.refresh_failed": "The code could not be renewed. Reload the page.",
    "holder.blocked": "This pass is blocked. Please contact the municipality.",
    "holder.balances.title": "My balances",
    "holder.balances.scheme": "Scheme",
    "holder.balances.left": "Left",
    "holder.balances.valid": "Valid",
    "holder.balances.none": "You have no balances at the moment.",
    "holder.offers.title": "Offers",
    "holder.offers.none": "There are no offers at the moment.",
    "holder.offers.discount": "{pct}% discount",
    "holder.history.title": "History",
    "holder.history.none": "Not available yet.",
    "unit.uses": "{n} times",
    "unit.unlimited": "unlimited",
    "valid.always": "always",
    "valid.until": "until {date}",
    "merchant.login.title": "Log in: till / scanner",
    "merchant.login.terminal": "Terminal id",
    "merchant.login.secret": "Secret",
    "merchant.scan.title": "Scan a pass",
    "merchant.scan.camera": "Camera",
    "merchant.scan.video": "Camera preview",
    "merchant.scan.manual": "Type the code",
    "merchant.scan.manual.label": "Pass code (starts with stadjerspas:1:)",
    "merchant.scan.manual.submit": "Use code",
    "merchant.scan.again": "Scan the next pass",
    "merchant.result.title": "Pass",
    "merchant.result.first_name": "First name",
    "merchant.result.status": "Status",
    "merchant.result.status.active": "Active",
    "merchant.result.status.blocked": "Blocked",
    "merchant.result.status.unregistered": "Unknown pass",
    "merchant.result.nothing": "Nothing to redeem at this partner.",
    "merchant.result.scheme": "What do you want to redeem?",
    "merchant.result.left": "Left: {left}",
    "merchant.amount.euro": "Amount in euros",
    "merchant.amount.uses": "Number of uses",
    "merchant.amount.price": "Purchase price in euros (the discount is calculated)",
    "merchant.amount.invalid": "Enter a valid amount.",
    "merchant.redeem": "Redeem",
    "merchant.redeeming": "Redeeming…",
    "merchant.ok.title": "Done",
    "merchant.ok.amount": "Redeemed: {amount}",
    "merchant.ok.balance": "New balance: {balance}",
    "merchant.ok.discount": "Discount: {amount}",
    "merchant.refused.title": "Refused",
    "merchant.reverse": "Reverse the last redemption",
    "merchant.reversed": "Reversed: {amount} back on the pass. New balance: {balance}",
    "merchant.reverse.confirm": "Reverse the last redemption?",
    "merchant.error.network": "No connection to the server. Please try again.",
    "scanner.starting": "Starting the camera…",
    "scanner.scanning": "Camera on. Hold the pass QR code in front of the camera.",
    "scanner.found": "Pass code read.",
    "scanner.stopped": "Camera off.",
    "scanner.not_a_pass_token": "This QR code is not a Stadjerspas pass. Scan the pass QR code.",
    "scanner.no_camera": "No camera found. Type the pass code instead.",
    "scanner.permission_denied": "Camera access was refused. Allow the camera, or type the code.",
    "scanner.camera_in_use": "The camera is in use by another app. Type the code instead.",
    "scanner.insecure_context": "The camera only works on a secure (https) page.",
    "scanner.camera_lost": "The camera stopped. Type the code, or start the camera again.",
    "scanner.camera_error": "The camera could not be started. Type the pass code instead.",
    "problem.default": "This cannot be processed ({code}).",
    "problem.token_malformed": "This is not a valid pass code.",
    "problem.token_truncated": "The pass code is incomplete. Scan or type it again.",
    "problem.token_expired": "The pass code has expired. Ask the holder to refresh it.",
    "problem.token_signer_not_allowed": "This pass code was not issued by the municipality.",
    "problem.token_wrong_chain": "This pass code belongs to another system.",
    "problem.token_wrong_contract": "This pass code belongs to another system.",
    "problem.token_revoked": "This pass has been revoked.",
    "problem.pass_blocked": "This pass is blocked.",
    "problem.redemption_pass_blocked": "This pass is blocked.",
    "problem.redemption_amount_over_balance": "The amount is more than the balance.",
    "problem.redemption_over_cap": "The amount is more than the maximum per redemption.",
    "problem.redemption_merchant_not_allowed": "This scheme is not valid at this partner.",
    "problem.redemption_scheme_unknown": "This scheme does not exist.",
    "problem.redemption_not_valid_now": "This scheme is not valid now.",
    "problem.reversal_window_closed": "Too late to reverse: the window has closed.",
    "problem.reversal_already_done": "This redemption has already been reversed.",
    "problem.reversal_unknown_redemption": "This redemption was not found.",
    "problem.unauthorized": "You are not logged in (any more). Please log in again.",
    "problem.auth_token_expired": "Your session has expired. Please log in again.",
    "problem.csrf_failed": "The page has expired. Please reload it.",
    "problem.receipt_timeout": "No confirmation yet. Try again (it will never be charged twice).",
    "admin.title": "Administration",
    "admin.reports": "Reports",
    "admin.report.schemes": "Per scheme",
    "admin.report.merchants": "Per partner",
    "admin.report.districts": "Per district",
    "admin.format.json": "JSON",
    "admin.format.csv": "CSV",
    "admin.api": "API documentation",
}

MESSAGES: Final[Mapping[str, Mapping[str, str]]] = {"nl": _NL, "en": _EN}


def translate(lang: str, key: str, **values: object) -> str:
    """The text of ``key`` in ``lang`` (falling back to Dutch, then the key), formatted."""
    text = MESSAGES.get(lang, _NL).get(key) or _NL.get(key) or key
    return text.format(**values) if values else text


def accept_language(header: str | None) -> str | None:
    """The supported language the ``Accept-Language`` header prefers most, if any."""
    best: tuple[float, str] | None = None
    for index, part in enumerate((header or "").split(",")):
        pieces = part.strip().split(";")
        tag = pieces[0].strip().lower().split("-")[0]
        quality = 1.0
        for param in pieces[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag in LANGUAGES and quality > 0:
            # Higher quality wins; on a tie the earlier entry wins.
            candidate = (quality - index * 1e-6, tag)
            if best is None or candidate > best:
                best = candidate
    return best[1] if best is not None else None


def pick_language(request: Request) -> str:
    """``?lang=``, then the ``lang`` cookie, then ``Accept-Language``, then Dutch."""
    for value in (request.query_params.get("lang"), request.cookies.get(LANG_COOKIE)):
        if value and value.lower() in LANGUAGES:
            return value.lower()
    return accept_language(request.headers.get("accept-language")) or DEFAULT_LANGUAGE
