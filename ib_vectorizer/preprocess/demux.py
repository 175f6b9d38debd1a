"""Decoding one PyAV stream robustly, shared by the audio and video loaders."""

from __future__ import annotations

from collections.abc import Iterator

import av

from ..errors import MediaError


def stream_frames(container: av.container.InputContainer, stream, what: str) -> Iterator:
    """Every decoded frame of ``stream``, in decoding order.

    A packet the decoder rejects is skipped and the others kept; a container
    that breaks part-way ends the stream there, or, if nothing was decoded yet,
    raises ``MediaError("not a decodable <what> file")``.
    """
    decoded_any = False
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue  # a damaged packet: keep what the others give
            for frame in frames:
                decoded_any = True
                yield frame
    except Exception as exc:
        if not decoded_any:
            raise MediaError(f"not a decodable {what} file") from exc
