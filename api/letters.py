"""Activation letters: one A4 page per pass with a fresh activation code, as a PDF and as a CSV
for a print house.

:func:`produce` is the whole run, shared by the API job (``POST /admin/letters``) and the
``stadjerspas letters`` command: select the passes (:func:`ledger.activation.select_letters`),
make new codes in memory, render the PDF and the CSV, and only then store the codes' hashes in
one bulk statement (every earlier code of those passes stops working). A failure before the last
step leaves the old codes in place; the output exists only if the codes were stored.

The codes appear only in that output. The API keeps a batch in this process's memory
(:class:`LetterBatches`) until each file has been downloaded once or
:data:`RETENTION_S` has passed, whichever is first (see docs/security.md).

**Card QR** (``with_card_qr``): the letter shows the QR of the pass's *current* printed card,
the same token as on the card (a card token is fixed by the card's serial and issue time, and
the signature is deterministic), so no card is re-issued and no transaction is sent; a pass
without an active printed card gets its letter without the QR and is listed in
``without_card``. Issue cards first (``POST /admin/passes/{n}/card``) to print them on letters.

Fonts are Bitstream Vera (the printed card's, embedded): a character it lacks is printed as its
compatibility form (``ĳ`` as ``ij``) or without its accent (``ő`` as ``o``), never as an
empty box; the CSV carries the exact text.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import multiprocessing
import os
import secrets
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen.canvas import Canvas
from sqlmodel import col, select

from api.jobs import Job, Progress, jobs_of
from api.problems import ApiProblem
from api.runtime import Runtime
from api.schemas import JSON_INT_MAX
from ledger import activation as act
from ledger.csv_safe import csv_row
from ledger.registry import Registry, RegistryError, UnknownDistrict, format_postcode
from ledger.store.registry import CardStatus, PassRecord, PrintedCard
from wallet.qr import qr_matrix

__all__ = [
    "CSV_COLUMNS",
    "RETENTION_S",
    "LetterBatches",
    "LetterContent",
    "LettersIn",
    "Produced",
    "batches_of",
    "download",
    "dutch_date",
    "produce",
    "render_csv",
    "render_pdf",
    "selection_of",
    "skipped_json",
    "start_letters",
]

log = logging.getLogger(__name__)

#: How long a batch's files wait in memory for their download (seconds).
RETENTION_S: Final = 30 * 60
#: The sender printed on every letter.
SENDER: Final = ("Gemeente Groningen", "Stadjerspas")
#: The CSV's header (the card column only with ``with_card_qr``).
CSV_COLUMNS: Final = (
    "naam",
    "straat_huisnummer",
    "postcode",
    "plaats",
    "pasnummer",
    "activeringscode",
)
CSV_CARD_COLUMN: Final = "kaart_token"
_MONTHS: Final = (
    "januari",
    "februari",
    "maart",
    "april",
    "mei",
    "juni",
    "juli",
    "augustus",
    "september",
    "oktober",
    "november",
    "december",
)


# -- request ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PassesSelection(_Strict):
    kind: Literal["passes"]
    pass_numbers: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        max_length=act.MAX_EXPLICIT, examples=[["GR0000001", "GR0000002"]]
    )


class HoldersSelection(_Strict):
    kind: Literal["holders"]
    holder_ids: list[Annotated[int, Field(ge=1, le=JSON_INT_MAX)]] = Field(
        max_length=act.MAX_EXPLICIT, examples=[[1, 2]]
    )


class DistrictSelection(_Strict):
    kind: Literal["district"]
    district: str = Field(min_length=1, max_length=16, examples=["WK001401"])


class NotActivatedSelection(_Strict):
    kind: Literal["not_activated"]


Selection = Annotated[
    PassesSelection | HoldersSelection | DistrictSelection | NotActivatedSelection,
    Field(discriminator="kind"),
]


class LettersIn(_Strict):
    """Which holders get a letter (``selection``, by ``kind``), and whether letters carry the
    printed card's QR."""

    selection: Selection
    with_card_qr: bool = False


def selection_of(body: LettersIn) -> act.LetterSelection:
    match body.selection:
        case PassesSelection(pass_numbers=numbers):
            return act.ByPassNumbers(tuple(numbers))
        case HoldersSelection(holder_ids=ids):
            return act.ByHolderIds(tuple(ids))
        case DistrictSelection(district=code):
            return act.ByDistrict(code)
        case _:
            return act.NotActivated()


# -- rendering --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LetterContent:
    target: act.LetterTarget
    code: str
    card_token: str | None = None
    #: the card token's QR matrix, if computed ahead (:func:`qr_matrices`)
    card_qr: list[list[bool]] | None = None


def _packed_qr(token: str) -> tuple[int, bytes]:
    """The QR matrix of ``token`` as (side, bits packed row by row): small to send between
    processes."""
    matrix = qr_matrix(token, mask_pattern=_QR_MASK)
    bits = "".join("1" if value else "0" for row in matrix for value in row)
    return len(matrix), int(bits, 2).to_bytes((len(bits) + 7) // 8, "big")


def _unpacked_qr(side: int, packed: bytes) -> list[list[bool]]:
    bits = bin(int.from_bytes(packed, "big"))[2:].zfill(side * side)
    return [[bit == "1" for bit in bits[row * side : (row + 1) * side]] for row in range(side)]


#: From this many card QR codes on, they are computed by a pool of processes (one per core):
#: encoding a 200-character token is pure-Python Reed-Solomon work, ~5 ms each.
QR_POOL_FROM: Final = 400


def qr_matrices(tokens: Sequence[str]) -> list[list[list[bool]]]:
    """The QR matrices of ``tokens`` (fixed mask), on every core for many of them."""
    if len(tokens) < QR_POOL_FROM or (os.cpu_count() or 1) < 2:
        return [qr_matrix(token, mask_pattern=_QR_MASK) for token in tokens]
    context = multiprocessing.get_context("spawn")  # no fork of a threaded service
    workers = min(os.cpu_count() or 2, 4)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        chunk = max(50, len(tokens) // (workers * 8))
        return [_unpacked_qr(*packed) for packed in pool.map(_packed_qr, tokens, chunksize=chunk)]


def dutch_date(day: date) -> str:
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def _printable(text: str, font: str) -> str:
    """``text`` with every character the font lacks replaced by its compatibility form or
    its letter without accents (never an empty box)."""
    glyphs: dict[int, int] = getattr(pdfmetrics.getFont(font), "face").charToGlyph  # noqa: B009
    if all(ord(ch) in glyphs for ch in text):
        return text
    out: list[str] = []
    for ch in text:
        if ord(ch) in glyphs:
            out.append(ch)
            continue
        compatible = unicodedata.normalize("NFKC", ch)
        if all(ord(c) in glyphs for c in compatible):
            out.append(compatible)
            continue
        bare = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        out.append(bare if bare and all(ord(c) in glyphs for c in bare) else "?")
    return "".join(out)


def _fonts() -> tuple[str, str]:
    from api.admin_services import _card_fonts

    return _card_fonts()


def _fit(text: str, font: str, size: float, width: float) -> tuple[str, float]:
    from api.admin_services import _fit as fit

    return fit(_printable(text, font), font, size, width)


@functools.lru_cache(maxsize=64)
def _static_split(text: str, font: str, size: float, width: float) -> tuple[str, ...]:
    """The lines of a text that is the same on every letter (computed once, not per letter;
    never a holder's name or address: those are not cached)."""
    return tuple(simpleSplit(_printable(text, font), font, size, width))


@functools.lru_cache(maxsize=64)
def _static_fit(text: str, font: str, size: float, width: float) -> tuple[str, float]:
    return _fit(text, font, size, width)


def _wrapped(text: str, font: str, width: float) -> tuple[list[str], float]:
    """An address line in at most two lines of 11, 10 or 9 pt (PostNL reads 9 pt and more);
    only a longer one is shortened (with an ellipsis) at 9 pt."""
    shown = _printable(text, font)
    for size in (11.0, 10.0, 9.0):
        parts: list[str] = simpleSplit(shown, font, size, width)
        if len(parts) <= 2:
            return parts, size
    first = simpleSplit(shown, font, 9.0, width)[0]
    rest, rest_size = _fit(shown[len(first) :].strip(), font, 9.0, width)
    return [first, rest], min(9.0, rest_size)


_PAGE_W, _PAGE_H = A4
_LEFT: Final = 25 * mm
_RIGHT: Final = _PAGE_W - 20 * mm
#: Window envelope (NEN 1026 / PostNL: address window 20 mm from the left, 50 mm from the top).
_WINDOW_LEFT: Final = 22 * mm
_WINDOW_TOP: Final = 48 * mm
_WINDOW_WIDTH: Final = 85 * mm
_QR_SIDE: Final = 42 * mm
#: A fixed QR mask: scoring all eight masks would take 10 ms a letter (see wallet.qr.qr_matrix).
_QR_MASK: Final = 2


def _draw_letter(
    pdf: Canvas, letter: LetterContent, *, login_url: str, today: date, fonts: tuple[str, str]
) -> None:
    regular, bold = fonts
    target = letter.target

    def top(y_mm: float) -> float:
        return _PAGE_H - y_mm * mm

    def line(
        text: str, x: float, y: float, font: str, size: float, width: float, *, same: bool = False
    ) -> None:
        """``same``: the text is the same on every letter (its fitting is computed once)."""
        shown, fitted = (_static_fit if same else _fit)(text, font, size, width)
        pdf.setFont(font, fitted)
        pdf.drawString(x, y, shown)

    # sender (top right)
    sender_x = 120 * mm
    line(SENDER[0], sender_x, top(20), bold, 13, _RIGHT - sender_x, same=True)
    line(SENDER[1], sender_x, top(26), regular, 11, _RIGHT - sender_x, same=True)

    # window: return line, then name and address
    return_line = f"{SENDER[0]} · {SENDER[1]}"
    line(return_line, _WINDOW_LEFT, top(_WINDOW_TOP / mm), regular, 7, _WINDOW_WIDTH, same=True)
    address = [
        target.name,
        target.street,
        f"{format_postcode(target.postcode)}  {target.town.upper()}",
    ]
    y = top(_WINDOW_TOP / mm + 8)
    for text in address:
        lines, size = _wrapped(text, regular, _WINDOW_WIDTH)
        pdf.setFont(regular, size)
        for part in lines:
            pdf.drawString(_WINDOW_LEFT, y, part)
            y -= size + 3

    # date and subject
    width = _RIGHT - _LEFT
    line(f"Datum: {dutch_date(today)}", _LEFT, top(100), regular, 10, width)
    line(f"Pasnummer: {target.pass_number}", _LEFT, top(105), regular, 10, width)
    line("Onderwerp: uw Stadjerspas activeren", _LEFT, top(115), bold, 11, width, same=True)

    y = top(128)
    pdf.setFont(regular, 11)
    for part in simpleSplit(_printable(f"Beste {target.name},", regular), regular, 11, width):
        pdf.drawString(_LEFT, y, part)
        y -= 14
    y -= 6
    paragraph = (
        "Met de Stadjerspas krijgt u korting en tegoed bij deelnemers in de stad. Op de website "
        "ziet u uw tegoed en uw pas. Daarvoor logt u de eerste keer in met de activeringscode "
        "hieronder."
    )
    pdf.setFont(regular, 11)
    for text in _static_split(paragraph, regular, 11, width):
        pdf.drawString(_LEFT, y, text)
        y -= 14

    # the code box
    y -= 8
    box_h = 26 * mm
    pdf.setLineWidth(1)
    pdf.rect(_LEFT, y - box_h, width, box_h, stroke=1, fill=0)
    line("Uw pasnummer", _LEFT + 6 * mm, y - 9 * mm, regular, 10, 50 * mm, same=True)
    line(target.pass_number, _LEFT + 60 * mm, y - 9 * mm, bold, 16, width - 66 * mm)
    line("Uw activeringscode", _LEFT + 6 * mm, y - 19 * mm, regular, 10, 50 * mm, same=True)
    line(letter.code, _LEFT + 60 * mm, y - 19 * mm, bold, 16, width - 66 * mm)
    y -= box_h + 12 * mm

    # how to log in
    line("Zo logt u in", _LEFT, y, bold, 11, width, same=True)
    y -= 16
    text_width = width - (_QR_SIDE + 6 * mm if letter.card_token else 0)
    steps = [
        f"Ga naar {login_url}",
        "Vul uw pasnummer in.",
        "Vul de activeringscode in (hoofdletters of kleine letters, met of zonder streepjes).",
        "Kies daarna zelf een pincode. Die gebruikt u bij de kassa als het bedrag hoger is dan "
        "het bedrag zonder pincode.",
    ]
    for number, step in enumerate(steps, start=1):
        pdf.setFont(regular, 10.5)
        pdf.drawString(_LEFT, y, f"{number}.")
        for text in _static_split(step, regular, 10.5, text_width - 8 * mm):
            pdf.drawString(_LEFT + 8 * mm, y, text)
            y -= 13.5
        y -= 3

    if letter.card_token:
        side = _QR_SIDE
        qr_left, qr_bottom = _RIGHT - side, y + 10
        from api.admin_services import draw_qr

        draw_qr(
            pdf,
            letter.card_qr or qr_matrix(letter.card_token, mask_pattern=_QR_MASK),
            left=qr_left,
            bottom=qr_bottom,
            side=side,
            raster=True,
        )
        caption = "Uw Stadjerspas: laat deze code scannen bij de kassa."
        pdf.setFont(regular, 8)
        cy = qr_bottom - 10
        for text in _static_split(caption, regular, 8, side):
            pdf.drawString(qr_left, cy, text)
            cy -= 10
        y = min(y, cy - 6)

    # footer
    notes = [
        "Deze code is persoonlijk. Deel hem met niemand; medewerkers van de gemeente vragen er "
        "nooit om.",
        "Krijgt u een nieuwe brief, dan werkt de code in deze brief niet meer.",
        "Vragen? Neem contact op met de Stadjerspas van de Gemeente Groningen.",
    ]
    pdf.setFont(regular, 9)
    fy = 30 * mm
    for note in reversed(notes):
        for text in reversed(_static_split(note, regular, 9, width)):
            pdf.drawString(_LEFT, fy, text)
            fy += 11.5
    pdf.showPage()


def render_pdf(
    letters: Sequence[LetterContent],
    *,
    login_url: str,
    today: date,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """One A4 page per letter, in the order given."""
    fonts = _fonts()
    out = io.BytesIO()
    pdf = Canvas(out, pagesize=A4, pageCompression=1, invariant=True)
    pdf.setTitle("Stadjerspas activeringsbrieven")
    pdf.setAuthor(" · ".join(SENDER))
    pdf.setSubject("Activeringsbrieven")
    for index, letter in enumerate(letters, start=1):
        _draw_letter(pdf, letter, login_url=login_url, today=today, fonts=fonts)
        if progress is not None and index % 500 == 0:
            progress(500)
    pdf.save()
    if progress is not None:
        progress(len(letters) % 500)
    return out.getvalue()


def render_csv(letters: Sequence[LetterContent], *, with_card: bool) -> bytes:
    """The print house's CSV: one row per letter (UTF-8, ``,``, ``\\n``; cells escaped against
    formula injection)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *((CSV_CARD_COLUMN,) if with_card else ())])
    for letter in letters:
        t = letter.target
        row: list[Any] = [t.name, t.street, format_postcode(t.postcode), t.town]
        row += [t.pass_number, letter.code]
        if with_card:
            row.append(letter.card_token or "")
        writer.writerow(csv_row(row))
    return out.getvalue().encode("utf-8")


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Produced:
    pdf: bytes
    csv: bytes
    letters: int
    skipped: list[act.Skipped]
    without_card: list[str]
    seconds: float


def _active_cards(
    registry: Registry, targets: Sequence[act.LetterTarget]
) -> dict[int, tuple[PassRecord, PrintedCard]]:
    ids = [t.pass_record_id for t in targets]
    found: dict[int, tuple[PassRecord, PrintedCard]] = {}
    with registry.store.session() as session:
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            rows = session.exec(
                select(PassRecord, PrintedCard)
                .join(PrintedCard, col(PrintedCard.pass_record_id) == col(PassRecord.id))
                .where(col(PassRecord.id).in_(chunk))
                .where(PrintedCard.status == CardStatus.ACTIVE)
                .order_by(col(PrintedCard.id))
            ).all()
            for record, card in rows:
                assert record.id is not None
                found[record.id] = (record, card)  # the latest active card wins
        session.expunge_all()
    return found


def produce(
    registry: Registry,
    selection: act.LetterSelection,
    *,
    key: bytes | None,
    login_url: str,
    today: date,
    card_token: Callable[[PassRecord, PrintedCard], str] | None = None,
    selected: act.Selected | None = None,
    progress: Callable[[int], None] | None = None,
) -> Produced:
    """Select, make codes, render, then store the codes (see the module text). With
    ``card_token`` (a function giving a card's token URI) letters carry the card QR."""
    started = time.perf_counter()
    chosen = selected if selected is not None else act.select_letters(registry, selection)
    codes, hashes = act.new_codes(chosen.letters, key=key)
    tokens: dict[int, str] = {}
    without_card: list[str] = []
    if card_token is not None:
        cards = _active_cards(registry, chosen.letters)
        for target in chosen.letters:
            pair = cards.get(target.pass_record_id)
            if pair is None:
                without_card.append(target.pass_number)
            else:
                tokens[target.pass_record_id] = card_token(*pair)
    ordered = [tokens[t.pass_record_id] for t in chosen.letters if t.pass_record_id in tokens]
    matrices = iter(qr_matrices(ordered))
    contents = [
        LetterContent(
            t,
            codes[t.pass_record_id],
            tokens.get(t.pass_record_id),
            next(matrices) if t.pass_record_id in tokens else None,
        )
        for t in chosen.letters
    ]
    pdf = render_pdf(contents, login_url=login_url, today=today, progress=progress)
    csv_bytes = render_csv(contents, with_card=card_token is not None)
    act.store_codes(registry, hashes)
    seconds = time.perf_counter() - started
    log.info(
        "activation letters: %d letters for %s, %d skipped, in %.1f s",
        len(contents),
        act.describe(selection),
        len(chosen.skipped),
        seconds,
    )
    return Produced(
        pdf=pdf,
        csv=csv_bytes,
        letters=len(contents),
        skipped=chosen.skipped,
        without_card=without_card,
        seconds=seconds,
    )


# -- batches awaiting download ------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    expires: float
    files: dict[str, bytes] = field(default_factory=dict)


class LetterBatches:
    """Batches of letters in this process's memory: each file until its first download or
    :data:`RETENTION_S`, whichever is first."""

    def __init__(self, *, retention_s: float = RETENTION_S) -> None:
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self.retention_s = retention_s

    def put(self, *, pdf: bytes, csv: bytes) -> tuple[str, datetime]:
        batch_id = secrets.token_urlsafe(18)
        expires = time.monotonic() + self.retention_s
        with self._lock:
            self._purge()
            self._batches[batch_id] = _Batch(expires, {"pdf": pdf, "csv": csv})
        return batch_id, datetime.fromtimestamp(time.time() + self.retention_s, UTC)

    def take(self, batch_id: str, kind: str) -> bytes | None:
        """The file (``pdf`` or ``csv``) of a batch, removed from memory; None when unknown,
        expired or already downloaded."""
        with self._lock:
            self._purge()
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            data = batch.files.pop(kind, None)
            if not batch.files:
                del self._batches[batch_id]
            return data

    def pending(self) -> int:
        with self._lock:
            self._purge()
            return len(self._batches)

    def _purge(self) -> None:
        now = time.monotonic()
        for batch_id in [b for b, batch in self._batches.items() if batch.expires <= now]:
            del self._batches[batch_id]


_BATCHES: weakref.WeakKeyDictionary[object, LetterBatches] = weakref.WeakKeyDictionary()
_BATCHES_LOCK = threading.Lock()


def batches_of(owner: object) -> LetterBatches:
    """The letter batches of a runtime (this process only)."""
    with _BATCHES_LOCK:
        batches = _BATCHES.get(owner)
        if batches is None:
            batches = _BATCHES[owner] = LetterBatches()
        return batches


def skipped_json(skipped: Sequence[act.Skipped]) -> list[dict[str, Any]]:
    return [
        {"holder_id": s.holder_id, "pass_number": s.pass_number, "reason": s.reason}
        for s in skipped
    ]


# -- the API's side -----------------------------------------------------------------------------


def _problem_of_selection(exc: RegistryError) -> ApiProblem:
    if isinstance(exc, UnknownDistrict):
        return ApiProblem(422, "district_unknown", str(exc))
    if isinstance(exc, act.UnknownInSelection):
        return ApiProblem(422, "selection_unknown", str(exc))
    if isinstance(exc, act.EmptySelection):
        return ApiProblem(422, "selection_empty", str(exc))
    return ApiProblem(422, "selection_invalid", str(exc))


def start_letters(runtime: Runtime, body: LettersIn) -> Job:
    """Check the selection now (a refusal is a problem and changes nothing), then produce the
    letters as a job whose result names the batch and its download links."""
    registry = runtime.store.registry
    selection = selection_of(body)
    try:
        selected = act.select_letters(registry, selection)
    except RegistryError as exc:
        raise _problem_of_selection(exc) from None
    card_token: Callable[[PassRecord, PrintedCard], str] | None = None
    if body.with_card_qr:
        from api.admin_services import _card_token

        def card_token(record: PassRecord, card: PrintedCard) -> str:
            return _card_token(runtime, record, card)[0]

    settings = runtime.settings

    def work(progress: Progress) -> dict[str, Any]:
        progress.set_total(len(selected.letters))
        produced = produce(
            registry,
            selection,
            key=registry.code_key,
            login_url=settings.holder_login_url,
            today=datetime.now(UTC).date(),
            card_token=card_token,
            selected=selected,
            progress=progress.advance,
        )
        batch, expires = batches_of(runtime).put(pdf=produced.pdf, csv=produced.csv)
        return {
            "batch": batch,
            "letters": produced.letters,
            "skipped": skipped_json(produced.skipped),
            "without_card": produced.without_card,
            "pdf": f"/admin/letters/{batch}.pdf",
            "csv": f"/admin/letters/{batch}.csv",
            "expires_at": expires.isoformat(),
            "seconds": round(produced.seconds, 3),
        }

    return jobs_of(runtime).submit("letters", work, total=len(selected.letters))


def download(runtime: Runtime, batch: str, kind: str) -> bytes:
    data = batches_of(runtime).take(batch, kind)
    if data is None:
        raise ApiProblem(
            404,
            "letters_unknown",
            f"no letters batch {batch!r} with a {kind.upper()} waiting: it was downloaded "
            f"already, or it expired ({RETENTION_S // 60} minutes), or the service restarted; "
            "produce the letters again (that makes new codes)",
        )
    return data
