"""QR rendering of pass token URIs (PNG and SVG).

The matrix comes from ``qrcode`` (error correction level M, smallest version that fits); the
images are drawn here so that they are always black modules on an *opaque white* background that
includes the quiet zone (``qrcode``'s SVG factories leave it transparent, which scanners cannot
read on a dark page).

Sizes, for a phone camera at about 30 cm (rule of thumb: the code should be at least a tenth of
the scanning distance, i.e. >= 30 mm): a version-1 token URI (214 characters) is a version-11
symbol of 61 x 61 modules (sometimes version 10, 57 x 57, when ``qrcode``'s mixed-mode
segmentation finds long digit/upper-case runs), 69 x 69 with the 4-module quiet zone.

- PNG: :data:`DEFAULT_PNG_BOX_SIZE` = 8 px per module -> 552 x 552 px for version 11, crisp at
  any display scale (integer pixels per module, 1-bit image, no transparency).
- SVG: :data:`DEFAULT_SVG_MODULE_MM` = 0.6 mm per module, explicit ``width``/``height`` in mm ->
  41.4 x 41.4 mm for version 11 (36.6 mm of code), which fits on an ID-1 card (54 mm high) and
  reads at 30 cm.
  The ``viewBox`` is in modules and ``shape-rendering="crispEdges"``, so CSS may scale it freely.
"""

from __future__ import annotations

import io

import qrcode
from PIL import Image
from qrcode.exceptions import DataOverflowError

from wallet.errors import InvalidValue, QrDataTooLong

__all__ = [
    "DEFAULT_BORDER",
    "DEFAULT_PNG_BOX_SIZE",
    "DEFAULT_SVG_MODULE_MM",
    "qr_matrix",
    "render_png",
    "render_svg",
]

#: Pixels per module in PNGs.
DEFAULT_PNG_BOX_SIZE = 8
#: Millimetres per module in SVGs.
DEFAULT_SVG_MODULE_MM = 0.6
#: Quiet zone in modules (4 is the minimum ISO/IEC 18004 asks for).
DEFAULT_BORDER = 4

_MAX_BOX_SIZE = 64
_MAX_BORDER = 64


def _check_border(border: int) -> None:
    if isinstance(border, bool) or not isinstance(border, int) or not 0 <= border <= _MAX_BORDER:
        raise InvalidValue(f"border must be an int in 0 .. {_MAX_BORDER} modules, got {border!r}")


def qr_matrix(text: str, *, mask_pattern: int | None = None) -> list[list[bool]]:
    """Return the QR symbol for ``text`` (level M) as rows of modules, True = dark, no border.

    ``mask_pattern`` (0-7) fixes the mask instead of scoring all eight (any mask is a valid,
    equally readable symbol of the same data; scoring is most of the time: about 10 ms against
    1.5 ms): for printing thousands of codes at once (activation letters)."""
    if not isinstance(text, str):
        raise InvalidValue(f"QR text must be a str, got {type(text).__name__}")
    if mask_pattern is not None and mask_pattern not in range(8):
        raise InvalidValue(f"mask_pattern {mask_pattern!r} must be 0-7")
    code = qrcode.QRCode(
        version=None,
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        box_size=1,
        border=0,
        mask_pattern=mask_pattern,
    )
    try:
        code.add_data(text.encode("utf-8"))
        code.make(fit=True)
    except (DataOverflowError, ValueError) as exc:
        raise QrDataTooLong(
            f"text of {len(text)} characters does not fit in a QR code at error "
            f"correction level M ({exc})"
        ) from None
    return [[bool(module) for module in row] for row in code.get_matrix()]


def render_png(
    text: str, *, box_size: int = DEFAULT_PNG_BOX_SIZE, border: int = DEFAULT_BORDER
) -> bytes:
    """Render ``text`` as a 1-bit PNG: black modules of ``box_size`` px on opaque white."""
    if (
        isinstance(box_size, bool)
        or not isinstance(box_size, int)
        or not (1 <= box_size <= _MAX_BOX_SIZE)
    ):
        raise InvalidValue(
            f"box_size must be an int in 1 .. {_MAX_BOX_SIZE} px per module, got {box_size!r}"
        )
    _check_border(border)
    matrix = qr_matrix(text)
    size = len(matrix) + 2 * border
    image = Image.new("1", (size, size), 1)
    pixels = [1] * (size * size)
    for y, row in enumerate(matrix):
        base = (y + border) * size + border
        for x, dark in enumerate(row):
            if dark:
                pixels[base + x] = 0
    image.putdata(pixels)
    if box_size != 1:
        image = image.resize((size * box_size, size * box_size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _format_mm(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{text}mm"


def render_svg(
    text: str, *, module_mm: float = DEFAULT_SVG_MODULE_MM, border: int = DEFAULT_BORDER
) -> str:
    """Render ``text`` as a standalone SVG document: white background, black modules.

    ``width``/``height`` are ``(modules + 2 * border) * module_mm`` millimetres; the
    ``viewBox`` is in modules.
    """
    if (
        isinstance(module_mm, bool)
        or not isinstance(module_mm, (int, float))
        or not (0.1 <= module_mm <= 10)
    ):
        raise InvalidValue(f"module_mm must be a number in 0.1 .. 10 mm, got {module_mm!r}")
    _check_border(border)
    matrix = qr_matrix(text)
    size = len(matrix) + 2 * border
    runs: list[str] = []
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            length = x - start
            runs.append(f"M{start + border} {y + border}h{length}v1h-{length}z")
    dimension = _format_mm(size * module_mm)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" '
        f'width="{dimension}" height="{dimension}" viewBox="0 0 {size} {size}" '
        f'shape-rendering="crispEdges">'
        f'<rect x="0" y="0" width="{size}" height="{size}" fill="#ffffff"/>'
        f'<path fill="#000000" d="{"".join(runs)}"/>'
        "</svg>\n"
    )
