"""How the commands log: one line format, and FFmpeg kept quiet about damaged media."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FFMPEG_LOGGER = "libav"  # PyAV logs FFmpeg's messages as libav.<component>


def quiet_ffmpeg_logs() -> None:
    """Keep FFmpeg's complaint about each damaged packet out of a command's log.

    A corrupt video makes FFmpeg log dozens of ERROR lines ("error while
    decoding MB 6 0"); the item's own error (an HTTP 400, a dead letter)
    already says what matters.
    """
    logging.getLogger(FFMPEG_LOGGER).setLevel(logging.CRITICAL)
