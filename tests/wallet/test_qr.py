"""QR rendering: decoded by real decoders (zbarimg; SVG rasterised by CairoSVG)."""

from __future__ import annotations

import io
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from wallet import (
    InvalidValue,
    QrDataTooLong,
    decode_token_uri,
    encode_token_uri,
    render_png,
    render_svg,
)
from wallet.qr import DEFAULT_PNG_BOX_SIZE, DEFAULT_SVG_MODULE_MM, qr_matrix

ZBARIMG = shutil.which("zbarimg")
needs_zbar = pytest.mark.skipif(
    ZBARIMG is None, reason="zbarimg not installed (Debian package zbar-tools)"
)
SVG_NS = "{http://www.w3.org/2000/svg}"


def zbar_decode(png: bytes, tmp_path: Path) -> str:
    assert ZBARIMG is not None
    path = tmp_path / "code.png"
    path.write_bytes(png)
    result = subprocess.run(
        [ZBARIMG, "--raw", "-q", "--nodbus", str(path)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text = result.stdout.decode("utf-8")
    assert text.endswith("\n")
    return text[:-1]


def rasterise_svg(svg: str, *, px_per_module: int, background: str | None = None) -> bytes:
    cairosvg = pytest.importorskip("cairosvg", reason="CairoSVG (PyPI cairosvg) not installed")
    modules = int(ET.fromstring(svg).get("viewBox", "").split()[2])
    png: bytes = cairosvg.svg2png(
        bytestring=svg.encode("utf-8"),
        output_width=modules * px_per_module,
        output_height=modules * px_per_module,
        background_color=background,
    )
    return png


@pytest.fixture
def token_uri(make_signed) -> str:
    return encode_token_uri(make_signed(serial=0, amount_cap=1234))


def test_matrix_for_a_token_uri_is_version_10_or_11(token_uri: str) -> None:
    matrix = qr_matrix(token_uri)
    assert len(matrix) in (57, 61)  # version v has 17 + 4 * v modules a side
    assert all(len(row) == len(matrix) for row in matrix)


@needs_zbar
def test_png_decodes_to_the_exact_token(token_uri: str, tmp_path: Path) -> None:
    png = render_png(token_uri)
    assert zbar_decode(png, tmp_path) == token_uri
    assert decode_token_uri(zbar_decode(png, tmp_path)) == decode_token_uri(token_uri)


def test_png_geometry_and_opaque_white_quiet_zone(token_uri: str) -> None:
    image = Image.open(io.BytesIO(render_png(token_uri)))
    modules = len(qr_matrix(token_uri)) + 2 * 4
    assert image.format == "PNG"
    assert image.size == (modules * DEFAULT_PNG_BOX_SIZE,) * 2
    assert DEFAULT_PNG_BOX_SIZE >= 8
    gray = image.convert("L")
    quiet = 4 * DEFAULT_PNG_BOX_SIZE
    width = gray.size[0]
    for box in [
        (0, 0, width, quiet),
        (0, width - quiet, width, width),
        (0, 0, quiet, width),
        (width - quiet, 0, width, width),
    ]:
        assert gray.crop(box).getextrema() == (255, 255)
    histogram = gray.histogram()
    assert [level for level, count in enumerate(histogram) if count] == [0, 255]
    assert "transparency" not in image.info
    # Finder pattern: the first module inside the quiet zone is black.
    assert gray.getpixel((quiet, quiet)) == 0


@needs_zbar
@pytest.mark.parametrize(("box_size", "border"), [(4, 4), (12, 6), (8, 0)])
def test_png_options(token_uri: str, tmp_path: Path, box_size: int, border: int) -> None:
    png = render_png(token_uri, box_size=box_size, border=border)
    image = Image.open(io.BytesIO(png))
    assert image.size == ((len(qr_matrix(token_uri)) + 2 * border) * box_size,) * 2
    if border:
        assert zbar_decode(png, tmp_path) == token_uri


@needs_zbar
def test_svg_decodes_to_the_exact_token(token_uri: str, tmp_path: Path) -> None:
    png = rasterise_svg(render_svg(token_uri), px_per_module=6)
    assert zbar_decode(png, tmp_path) == token_uri


@needs_zbar
def test_svg_reads_on_a_dark_page(token_uri: str, tmp_path: Path) -> None:
    png = rasterise_svg(render_svg(token_uri), px_per_module=6, background="black")
    image = Image.open(io.BytesIO(png)).convert("L")
    assert image.getpixel((0, 0)) == 255  # the quiet zone is opaque white, not the page
    assert zbar_decode(png, tmp_path) == token_uri


def test_svg_structure(token_uri: str) -> None:
    root = ET.fromstring(render_svg(token_uri))
    assert root.tag == f"{SVG_NS}svg"
    modules = len(qr_matrix(token_uri)) + 2 * 4
    size_mm = modules * DEFAULT_SVG_MODULE_MM
    assert root.get("width") == root.get("height")
    assert float(root.get("width", "").removesuffix("mm")) == pytest.approx(size_mm)
    assert size_mm >= 30  # readable at 30 cm
    assert root.get("viewBox") == f"0 0 {modules} {modules}"
    rect, path = list(root)
    assert rect.tag == f"{SVG_NS}rect"
    assert (rect.get("width"), rect.get("height"), rect.get("fill")) == (
        str(modules),
        str(modules),
        "#ffffff",
    )
    assert path.get("fill") == "#000000"
    assert path.get("d", "").startswith("M4 4h7v1h-7z")  # top row of the finder pattern


def test_svg_options(token_uri: str) -> None:
    root = ET.fromstring(render_svg(token_uri, module_mm=1, border=6))
    modules = len(qr_matrix(token_uri)) + 12
    assert root.get("width") == f"{modules}mm"
    assert root.get("viewBox") == f"0 0 {modules} {modules}"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"box_size": 0}, "box_size must be an int in 1 .. 64"),
        ({"box_size": 65}, "box_size must be an int in 1 .. 64"),
        ({"box_size": True}, "box_size"),
        ({"border": -1}, "border must be an int in 0 .. 64"),
        ({"border": 2.0}, "border"),
    ],
)
def test_png_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment):
        render_png("x", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"module_mm": 0}, "module_mm must be a number in 0.1 .. 10 mm, got 0"),
        ({"module_mm": "1"}, "module_mm"),
        ({"border": 100}, "border must be an int in 0 .. 64"),
    ],
)
def test_svg_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidValue, match=fragment):
        render_svg("x", **kwargs)


def test_text_too_long_for_a_qr_code() -> None:
    with pytest.raises(QrDataTooLong, match="text of 3000 characters does not fit") as info:
        render_png("x" * 3000)
    assert info.value.code == "qr_data_too_long"
    with pytest.raises(QrDataTooLong):
        render_svg("x" * 3000)


def test_non_text_is_refused() -> None:
    with pytest.raises(InvalidValue, match="QR text must be a str, got bytes"):
        render_png(b"stadjerspas:1:")  # type: ignore[arg-type]
