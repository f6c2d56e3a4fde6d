"""Write a still image as a YUV4MPEG2 (Y4M) video for Chromium's fake camera, in pure Python.

Chromium's ``--use-file-for-fake-video-capture=<file.y4m>`` plays a Y4M file in a loop, and it
only accepts 4:2:0 planar frames (what ``ffmpeg -vf format=yuv420p`` writes; any other pixel
format fails silently with "Requested device not found"). This writes the same layout with
Pillow alone (no ffmpeg, no numpy)::

    YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\\n
    then per frame: FRAME\\n  Y (W*H bytes)  Cb (W/2*H/2)  Cr (W/2*H/2)

The picture is centred on a white canvas. The colour conversion is Pillow's JPEG (full-range
BT.601) YCbCr; chroma is averaged over 2x2 blocks (JPEG siting, as ``C420jpeg`` says).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

__all__ = ["still_to_y4m", "write_y4m"]


def still_to_y4m(
    picture: Image.Image | bytes,
    *,
    width: int = 640,
    height: int = 480,
    frames: int = 30,
    fps: int = 30,
    margin: int = 16,
) -> bytes:
    """Return a Y4M video of ``frames`` identical frames showing ``picture`` centred on white.

    ``picture`` is a PIL image or encoded image bytes (e.g. a PNG). A picture larger than the
    canvas minus ``margin`` on each side is scaled down (nearest neighbour, keeping the aspect
    ratio); it is never scaled up.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive and even, got {width}x{height}")
    if frames < 1 or fps < 1:
        raise ValueError(f"frames and fps must be >= 1, got {frames} and {fps}")
    image = Image.open(io.BytesIO(picture)) if isinstance(picture, bytes) else picture
    image = image.convert("RGB")
    room_w, room_h = width - 2 * margin, height - 2 * margin
    if image.width > room_w or image.height > room_h:
        scale = min(room_w / image.width, room_h / image.height)
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    y, cb, cr = canvas.convert("YCbCr").split()
    half = (width // 2, height // 2)
    frame = b"".join(
        (
            b"FRAME\n",
            y.tobytes(),
            cb.resize(half, Image.Resampling.BOX).tobytes(),
            cr.resize(half, Image.Resampling.BOX).tobytes(),
        )
    )
    header = f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\n"
    return header.encode("ascii") + frame * frames


def write_y4m(path: Path, picture: Image.Image | bytes, **options: int) -> Path:
    """Write :func:`still_to_y4m` of ``picture`` to ``path`` and return ``path``."""
    path.write_bytes(still_to_y4m(picture, **options))
    return path
