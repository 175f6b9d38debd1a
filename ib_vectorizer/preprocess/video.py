"""Video bytes -> the reference ImageBind video input, float32 (15, 3, 2, 224, 224).

The rules are the reference's (see ``docs/imagebind-facts.md``), because the
checkpoint was trained on exactly these views:

1. D is the first video stream's header duration,
   ``(duration - start_time) * time_base`` seconds.
2. Five clips of 2 s starting at ``i * max(D - 2, 0) / 5`` seconds (exact
   fractions, like the reference's clip sampler). Clip i holds the frames whose
   pts lie in ``[ceil(start / time_base) + start_time,
   ceil((start + 2) / time_base) + start_time)``.
3. From each clip take the frames at ``long(linspace(0, T - 1, 2))``: its first
   and its last frame in pts order.
4. Each frame as RGB24, divided by 255, short side scaled to 224 with
   ``F.interpolate`` (bilinear, ``align_corners=False``, long side
   ``floor(long / short * 224)``), normalised with the CLIP mean/std.
5. Three 224 x 224 crops along the long side: start, centre (offset
   ``ceil((L - 224) / 2)``) and end; views ordered clip by clip, crops 0, 1, 2.

The stream is decoded once; a frame is kept (as a reference to the decoded
frame, converted to RGB only at the end) only while it is some clip's first or
last frame, or the nearest frame to a clip that has none yet, so memory holds a
few frames, never the whole video. Decoding stops at the first frame past the
last clip. Rotation metadata is ignored, as the reference ignores it.

Where the reference crashes or has no rule we do something sensible instead:

- No header duration on the stream (WebM, for one): use the container's
  duration, then the end of the stream's last packet (pts + duration).
- A video shorter than 2 s: every clip is ``[0, 2 s)``, i.e. the whole video.
- A clip window that holds no frame (a gap in the stream, or a header that
  claims more than the stream holds): use the decoded frame nearest to the
  window in time, as both of that clip's frames.
- A 1-frame video: that frame everywhere.
- A packet the decoder rejects is skipped; a container that breaks part-way
  is used up to the break (an error only if no frame came out).
- Still images (PNG, JPEG, ...) and cover art in audio files are not videos.
- Every failure is a :class:`MediaError` with a short reason.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.audio import clip_starts
from ib_vectorizer.preprocess.constants import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    VIDEO_CLIP_SECONDS,
    VIDEO_CLIPS,
    VIDEO_CROPS,
    VIDEO_FRAMES_PER_CLIP,
)
from ib_vectorizer.preprocess.demux import stream_frames

__all__ = [
    "ClipFrames",
    "clip_windows",
    "decode_clip_frames",
    "load_video",
    "short_side_resize",
    "three_crops",
]


def load_video(data: bytes, max_seconds: float | None = None) -> torch.Tensor:
    """Decode ``data`` (MP4, WebM, MOV, ...) to float32 (15, 3, 2, 224, 224).

    ``max_seconds`` bounds the work: a longer video (by its header) is refused
    before any frame is decoded.
    """
    container = open_video(data)
    with container:
        stream = first_video_stream(container)
        duration = video_duration(data, container, stream)
        if max_seconds is not None and duration > max_seconds:
            raise MediaError(
                f"video is {_seconds(duration)} s long; the limit is {_seconds(max_seconds)} s"
            )
        windows = clip_windows(duration, stream.time_base, stream.start_time or 0)
        clips = decode_clip_frames(container, stream, windows)
        return frames_to_views(clips)


MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD: bounds the memory a handful of kept frames take


def open_video(data: bytes) -> av.container.InputContainer:
    """The PyAV container of ``data``, or MediaError."""
    if not data:
        raise MediaError("video file is empty (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as exc:
        raise MediaError("not a decodable video file") from exc
    name = container.format.name
    if name == "image2" or name.endswith("_pipe"):
        container.close()
        raise MediaError("not a video file (a still image)")
    return container


def first_video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The first video stream that is not an audio file's cover art."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            if stream.time_base is None:
                raise MediaError("video stream has no time base")
            width, height = stream.width or 0, stream.height or 0
            if width * height > MAX_FRAME_PIXELS:
                raise MediaError(
                    f"video frames are {width}x{height}; the limit is 8K UHD (7680x4320)"
                )
            return stream
    raise MediaError("no video stream")


def video_duration(data: bytes, container: av.container.InputContainer, stream) -> float:
    """D in seconds: the stream header, else the container header, else the last packet."""
    start = stream.start_time or 0
    if stream.duration is not None and stream.duration > 0:
        return float((stream.duration - start) * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return last_packet_end(data) - float(start * stream.time_base)


def last_packet_end(data: bytes) -> float:
    """End time in seconds (pts + duration) of the first video stream's last packet."""
    end = None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = first_video_stream(container)
            for packet in container.demux(stream):
                if packet.pts is not None:
                    packet_end = packet.pts + (packet.duration or 0)
                    end = packet_end if end is None else max(end, packet_end)
            time_base = stream.time_base
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError("not a decodable video file") from exc
    if end is None:
        raise MediaError("video has no frames")
    return float(end * time_base)


def clip_windows(duration: float, time_base: Fraction, start_pts: int) -> list[tuple[int, int]]:
    """The pts window ``[first, stop)`` of each of the five 2 s clips."""
    length = Fraction(VIDEO_CLIP_SECONDS)
    return [
        (
            math.ceil(start / time_base) + start_pts,
            math.ceil((start + length) / time_base) + start_pts,
        )
        for start in clip_starts(duration, VIDEO_CLIP_SECONDS, VIDEO_CLIPS)
    ]


Pick = tuple[int, av.VideoFrame]  # (pts, decoded frame)


@dataclass
class ClipFrames:
    """The frames one clip needs, updated as the decoder hands out frames."""

    first_pts: int
    stop_pts: int
    first: Pick | None = None  # smallest pts in the window
    last: Pick | None = None  # largest pts in the window
    before: Pick | None = None  # largest pts before the window, a fallback
    after: Pick | None = None  # smallest pts after the window, a fallback

    def offer(self, pts: int, frame: av.VideoFrame) -> None:
        """Keep ``frame`` if it is this clip's first, last or nearest-outside frame.

        On equal pts the later frame wins, as in the reference's pts-keyed dict.
        """
        if pts < self.first_pts:
            if self.before is None or pts >= self.before[0]:
                self.before = (pts, frame)
        elif pts >= self.stop_pts:
            if self.after is None or pts < self.after[0]:
                self.after = (pts, frame)
        else:
            if self.first is None or pts <= self.first[0]:
                self.first = (pts, frame)
            if self.last is None or pts >= self.last[0]:
                self.last = (pts, frame)

    def chosen(self) -> tuple[Pick, Pick]:
        """(first, last) frame of the clip; the nearest frame twice for an empty window."""
        if self.first is not None and self.last is not None:
            return self.first, self.last
        nearest = self.before
        if self.after is not None and (
            nearest is None or self.after[0] - (self.stop_pts - 1) < self.first_pts - nearest[0]
        ):
            nearest = self.after
        if nearest is None:
            raise MediaError("video has no frames")
        return nearest, nearest


def decode_clip_frames(
    container: av.container.InputContainer, stream, windows: list[tuple[int, int]]
) -> list[tuple[Pick, Pick]]:
    """Decode ``stream`` once and return each window's (first, last) frame with its pts."""
    clips = [ClipFrames(first, stop) for first, stop in windows]
    stop_all = max(stop for _, stop in windows)
    seen = False
    for pts, frame in decoded_frames(container, stream):
        seen = True
        for clip in clips:
            clip.offer(pts, frame)
        if pts >= stop_all:
            break  # past the last clip: no more frames are needed
    if not seen:
        raise MediaError("video has no frames")
    return [clip.chosen() for clip in clips]


def decoded_frames(container: av.container.InputContainer, stream) -> Iterator[Pick]:
    """(pts, frame) in decoding order; damaged packets are skipped.

    A frame without a timestamp is given the previous one's plus one tick.
    """
    stream.thread_type = "AUTO"
    previous: int | None = None
    for frame in stream_frames(container, stream, "video"):
        pts = frame.pts
        if pts is None:
            pts = (stream.start_time or 0) if previous is None else previous + 1
        previous = pts
        yield pts, frame


def frames_to_views(clips: list[tuple[Pick, Pick]]) -> torch.Tensor:
    """Each clip's two frames -> (15, 3, 2, 224, 224): 3 crops per clip, clip by clip."""
    crops_of: dict[int, list[torch.Tensor]] = {}  # per decoded frame, computed once
    views = []
    for picks in clips:
        frame_crops = []
        for _, frame in picks:
            if id(frame) not in crops_of:
                crops_of[id(frame)] = three_crops(normalise(short_side_resize(to_unit_rgb(frame))))
            frame_crops.append(crops_of[id(frame)])
        assert len(frame_crops) == VIDEO_FRAMES_PER_CLIP
        for crop in range(VIDEO_CROPS):
            views.append(torch.stack([crops[crop] for crops in frame_crops], dim=1))
    return torch.stack(views)


def to_unit_rgb(frame: av.VideoFrame) -> torch.Tensor:
    """A decoded frame as float32 RGB (3, H, W) in [0, 1]."""
    try:
        rgb = frame.to_ndarray(format="rgb24")
    except Exception as exc:
        raise MediaError("a video frame could not be converted to RGB") from exc
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0


def short_side_resize(image: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(C, H, W) with the short side bilinearly scaled to ``size``, long side floored."""
    height, width = image.shape[-2:]
    if width < height:
        new_height, new_width = math.floor(height / width * size), size
    else:
        new_height, new_width = size, math.floor(width / height * size)
    resized = F.interpolate(
        image.unsqueeze(0), size=(new_height, new_width), mode="bilinear", align_corners=False
    )
    return resized.squeeze(0)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """CLIP mean/std normalisation of a (3, H, W) image in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def three_crops(image: torch.Tensor, size: int = IMAGE_SIZE) -> list[torch.Tensor]:
    """Start, centre and end ``size`` x ``size`` crops of (C, H, W) along its long side."""
    height, width = image.shape[-2:]
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        offsets = (0, top, height - size)
        return [image[:, y : y + size, left : left + size] for y in offsets]
    offsets = (0, left, width - size)
    return [image[:, top : top + size, x : x + size] for x in offsets]


def _seconds(value: float) -> str:
    """7.0 -> '7', 6.9667 -> '6.97'."""
    return f"{value:.2f}".rstrip("0").rstrip(".")
