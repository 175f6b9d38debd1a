"""What kind of file a user dropped on the search page, or a stored media is, told from its bytes.

The browser's idea of a file type comes from its name; the bytes are what the
model will read, so they decide. Depth and thermal maps are ordinary images to
any sniffer: the page lets the user pick those.

``MEDIA_TYPES`` is also what the page may serve: stored media whose bytes
match none of these is never sent, whatever its name says (no HTML, SVG,
scripts or text other than an IMU CSV).
"""

from __future__ import annotations

from ib_vectorizer.modalities import Modality

MEDIA_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/bmp",
        "image/tiff",
        "image/webp",
        "audio/wav",
        "audio/flac",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "text/csv",  # an IMU recording
        "application/x-npy",  # an IMU recording
    }
)
SNIFF_BYTES = 4096  # what content_type reads (the CSV check looks at a few lines)


def content_type(data: bytes) -> str | None:
    """The MIME type of ``data`` by its magic bytes, one of MEDIA_TYPES; None when unknown."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"\x93NUMPY"):
        return "application/x-npy"
    if looks_like_csv(data):
        return "text/csv"
    return None


def looks_like_csv(data: bytes) -> bool:
    """Comma-separated numbers under an optional header: an IMU recording."""
    try:
        text = data[:SNIFF_BYTES].decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines = [line for line in text.splitlines()[:6] if line.strip()]
    if len(lines) < 2:
        return False
    numeric = 0
    for line in lines[1:]:
        cells = line.split(",")
        try:
            [float(c) for c in cells if c.strip()]
        except ValueError:
            return False
        numeric += len(cells) > 1
    return numeric > 0


MODALITY_OF_TYPE = {"image": Modality.VISION, "audio": Modality.AUDIO, "video": Modality.VIDEO}


def detect_modality(data: bytes) -> Modality:
    """The modality a query file is, from its bytes.

    Raises ValueError naming what was found when no modality reads it.
    """
    kind = content_type(data)
    if kind in ("text/csv", "application/x-npy"):
        return Modality.IMU
    if kind is not None and kind.split("/")[0] in MODALITY_OF_TYPE:
        return MODALITY_OF_TYPE[kind.split("/")[0]]
    raise ValueError(
        "not an image, audio, video or IMU (CSV or .npy) file (its first bytes match no "
        "supported format)"
    )
