"""Video bytes -> the reference ImageBind video input, float32 (15, 3, N, S, S).

N is the model's ``video_frames`` and S its ``image_size`` (2 and 224 for
imagebind_huge). These are the reference implementation's rules, because the
checkpoint was trained on exactly these views:

1. D is the first video stream's header duration,
   ``(duration - start_time) * time_base`` seconds.
2. Five clips of 2 s starting at ``i * max(D - 2, 0) / 5`` seconds (exact
   fractions, like the reference's clip sampler). Clip i holds the frames whose
   pts lie in ``[ceil(start / time_base) + start_time,
   ceil((start + 2) / time_base) + start_time)``.
3. From each clip's T frames in pts order take those at
   ``long(linspace(0, T - 1, N))``: for N = 2 its first and its last frame.
4. Each frame as RGB24, divided by 255, short side scaled to S with
   ``F.interpolate`` (bilinear, ``align_corners=False``, long side
   ``floor(long / short * S)``), normalised with the CLIP mean/std.
5. Three S x S crops along the long side: start, centre (offset
   ``ceil((L - S) / 2)``) and end; views ordered clip by clip, crops 0, 1, 2.

The stream is decoded once; a frame is kept (as a reference to the decoded
frame, converted to RGB only at the end) only while it is some clip's first or
last frame, or the nearest frame to a clip that has none yet, so memory holds a
few frames, never the whole video. Which frames lie between a clip's first and
last depends on T, known only when the clip is over: so for N > 2 the first pass
records every clip's pts and a second pass keeps just the N picked frames.
Decoding stops at the first frame past the last clip. Rotation metadata is
ignored, as the reference ignores it.

Where the reference crashes or has no rule we do something sensible instead:

- No header duration on the stream (WebM, for one): use the container's
  duration, then the end of the stream's last packet (pts + duration).
- A video shorter than 2 s: every clip is ``[0, 2 s)``, i.e. the whole video.
- A clip window that holds no frame (a gap in the stream, or a header that
  claims more than the stream holds): use the decoded frame nearest to the
  window in time, as all of that clip's frames.
- A 1-frame video: that frame everywhere.
- A packet the decoder rejects is skipped; a container that breaks part-way
  is used up to the break (an error only if no frame came out).
- Still images (PNG, JPEG, ...) and cover art in audio files are not videos.
- Every failure is a :class:`MediaError` with a short reason.

What decoding costs is bounded before it starts (:func:`video_cost`): the
header's duration, frame size and shape (``limits.py``), and the memory the
frames in flight take; each decoded frame is checked again, since a stream
may change its size part-way, and decoding stops at the caller's deadline.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
import torch
import torch.nn.functional as F

from ib_vectorizer.errors import MediaError, MediaTooLong
from ib_vectorizer.preprocess.audio import clip_starts
from ib_vectorizer.preprocess.config import IMAGEBIND_HUGE
from ib_vectorizer.preprocess.constants import (
    CLIP_MEAN,
    CLIP_STD,
    VIDEO_CLIP_SECONDS,
    VIDEO_CLIPS,
    VIDEO_CROPS,
)
from ib_vectorizer.preprocess.demux import stream_frames
from ib_vectorizer.preprocess.limits import (
    DECODER_SCRATCH,
    NO_LIMITS,
    DecodeLimits,
    ItemCost,
    check_picture_shape,
)

__all__ = [
    "ClipFrames",
    "clip_windows",
    "decode_clip_frames",
    "load_video",
    "short_side_resize",
    "three_crops",
    "video_cost",
]


# Decoding is the costly part; beyond this many seconds a video is refused unread.
MAX_VIDEO_SECONDS = 600.0


def load_video(
    data: bytes,
    max_seconds: float | None = MAX_VIDEO_SECONDS,
    size: int = IMAGEBIND_HUGE.image_size,
    frames_per_clip: int = IMAGEBIND_HUGE.video_frames,
    limits: DecodeLimits = NO_LIMITS,
) -> torch.Tensor:
    """Decode ``data`` (MP4, WebM, MOV, ...) to float32 (15, 3, frames_per_clip, size, size).

    ``max_seconds`` bounds the work: a longer video (by its header) is refused
    before any frame is decoded. ``limits``: frames that grow past the memory
    allowed, or the deadline passing, stop decoding.
    """
    with open_video(data) as container:
        stream = first_video_stream(container)
        duration = checked_duration(data, container, stream, max_seconds)
        windows = clip_windows(duration, stream.time_base, stream.start_time or 0)
        clips = decode_clip_frames(container, stream, windows, limits=limits)
        picks = [clip.picks(frames_per_clip) for clip in clips]
        if all(clip.holds(chosen) for clip, chosen in zip(clips, picks, strict=True)):
            return frames_to_views(clips, picks, size)
    # Frames between a clip's first and last are picked: decode again, keeping just those.
    with open_video(data) as container:
        stream = first_video_stream(container)
        clips = decode_clip_frames(container, stream, windows, keep=picks, limits=limits)
        return frames_to_views(clips, picks, size)


# 8K UHD: frames beyond it are refused before decoding (and the memory estimate decides
# whether the frames in flight fit in an item's limit).
MAX_FRAME_PIXELS = 7680 * 4320
# Decoder threads per video: each holds a frame, so the memory a video takes does not grow
# with the machine's cores (FFmpeg's default is one per core).
DECODE_THREADS = 4
# Frames a decoder holds besides its threads' (reference frames: 8 for VP9 and AV1, fewer
# than 16 for H.264 and HEVC at the sizes that cost), and the clips' first and last frames.
DECODER_FRAMES = 8
KEPT_FRAMES = 2 * VIDEO_CLIPS
# Converting one frame: RGB24, then float32 RGB.
CONVERSION_BYTES_PER_PIXEL = 3 + 12


def video_cost(data: bytes, max_seconds: float | None = MAX_VIDEO_SECONDS) -> ItemCost:
    """What :func:`load_video` will take to decode ``data``, from its headers."""
    with open_video(data) as container:
        stream = first_video_stream(container)
        checked_duration(data, container, stream, max_seconds)
        context = stream.codec_context
        cost = frames_cost(context.width, context.height, context.pix_fmt)
        return ItemCost(cost, f"a {context.width}x{context.height} {context.name} video")


def frames_cost(width: int, height: int, pix_fmt: str | None) -> int:
    """The memory of the frames a decoder and the clips hold, and of converting one."""
    frame_bytes = width * height * _bytes_per_pixel(pix_fmt)
    frames = DECODE_THREADS + DECODER_FRAMES + KEPT_FRAMES
    conversion = width * height * CONVERSION_BYTES_PER_PIXEL
    return math.ceil(frames * frame_bytes) + conversion + 2 * DECODER_SCRATCH  # a thread pool


def _bytes_per_pixel(pix_fmt: str | None) -> float:
    """What one pixel of a decoded frame takes (4:2:0 8-bit 1.5, 10-bit 3); 4 if unknown."""
    try:
        return av.VideoFormat(pix_fmt).padded_bits_per_pixel / 8 if pix_fmt else 4.0
    except (ValueError, TypeError):
        return 4.0


def checked_duration(
    source: bytes | Callable[[], BinaryIO],
    container: av.container.InputContainer,
    stream,
    max_seconds: float | None,
) -> float:
    """:func:`video_duration`, or MediaTooLong past ``max_seconds``."""
    duration = video_duration(source, container, stream)
    if max_seconds is not None and duration > max_seconds:
        raise MediaTooLong(
            f"video is {_seconds(duration)} s long; the limit is {_seconds(max_seconds)} s"
        )
    return duration


def open_video(data: bytes | BinaryIO) -> av.container.InputContainer:
    """The PyAV container of ``data`` (bytes, or a readable and seekable file), or MediaError."""
    if not data:
        raise MediaError("video file is empty (0 bytes)")
    try:
        container = av.open(io.BytesIO(data) if isinstance(data, bytes) else data, mode="r")
    except Exception as exc:
        raise MediaError("not a decodable video file") from exc
    name = container.format.name
    if name == "image2" or name.endswith("_pipe"):
        container.close()
        raise MediaError("not a video file (a still image)")
    return container


def first_video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The first video stream that is not an audio file's cover art, with a decoder.

    Its frame size (when the header gives one) is within the limits.
    """
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            if stream.time_base is None:
                raise MediaError("video stream has no time base")
            if stream.codec_context is None:
                raise MediaError("video stream's codec is not one FFmpeg can decode")
            width, height = stream.codec_context.width, stream.codec_context.height
            if width or height:  # 0x0: the header does not say; each frame is checked
                check_frame_size(width, height)
            return stream
    raise MediaError("no video stream")


def check_frame_size(width: int, height: int) -> None:
    """MediaError for frames over 8K UHD or too long for their width."""
    check_picture_shape(width, height, "video frame", MAX_FRAME_PIXELS)


def video_duration(
    source: bytes | Callable[[], BinaryIO], container: av.container.InputContainer, stream
) -> float:
    """D in seconds: the stream header, else the container header, else the last packet.

    ``source``: the video's bytes, or a function that opens it again (for the last packet).
    """
    start = stream.start_time or 0
    if stream.duration is not None and stream.duration > 0:
        return float((stream.duration - start) * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return last_packet_end(source) - float(start * stream.time_base)


def last_packet_end(source: bytes | Callable[[], BinaryIO]) -> float:
    """End time in seconds (pts + duration) of the first video stream's last packet."""
    end = None
    opened = io.BytesIO(source) if isinstance(source, bytes) else source()
    try:
        with opened, av.open(opened, mode="r") as container:
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


def clip_windows(
    duration: float, time_base: Fraction, start_pts: int, offset: Fraction = Fraction(0)
) -> list[tuple[int, int]]:
    """The pts window ``[first, stop)`` of each of the five 2 s clips.

    ``offset``: where the span of ``duration`` seconds starts in the stream (a segment's start).
    """
    length = Fraction(VIDEO_CLIP_SECONDS)
    return [
        (
            math.ceil((offset + start) / time_base) + start_pts,
            math.ceil((offset + start + length) / time_base) + start_pts,
        )
        for start in clip_starts(duration, VIDEO_CLIP_SECONDS, VIDEO_CLIPS)
    ]


Pick = tuple[int, av.VideoFrame]  # (pts, decoded frame)


@dataclass
class ClipFrames:
    """The frames one clip needs, updated as the decoder hands out frames."""

    first_pts: int
    stop_pts: int
    keep: frozenset[int] = frozenset()  # pts in the window to keep besides the first and last
    window_pts: set[int] = field(default_factory=set)  # every pts seen in the window
    first: Pick | None = None  # smallest pts in the window
    last: Pick | None = None  # largest pts in the window
    kept: dict[int, av.VideoFrame] = field(default_factory=dict)  # the frames of ``keep``
    before: Pick | None = None  # largest pts before the window, a fallback
    after: Pick | None = None  # smallest pts after the window, a fallback

    def offer(self, pts: int, frame: av.VideoFrame) -> None:
        """Keep ``frame`` if it is this clip's first, last, kept or nearest-outside frame.

        On equal pts the later frame wins, as in the reference's pts-keyed dict.
        """
        if pts < self.first_pts:
            if not self.window_pts and (self.before is None or pts >= self.before[0]):
                self.before = (pts, frame)
        elif pts >= self.stop_pts:
            if not self.window_pts and (self.after is None or pts < self.after[0]):
                self.after = (pts, frame)
        else:
            self.before = self.after = None  # only a window without frames falls back on them
            self.window_pts.add(pts)
            if self.first is None or pts <= self.first[0]:
                self.first = (pts, frame)
            if self.last is None or pts >= self.last[0]:
                self.last = (pts, frame)
            if pts in self.keep:
                self.kept[pts] = frame

    def picks(self, count: int) -> list[int]:
        """The pts of the frames at ``long(linspace(0, T - 1, count))`` of the window's T.

        A window without frames gives the nearest frame's pts ``count`` times.
        """
        if not self.window_pts:
            return [self.nearest()[0]] * count
        ordered = sorted(self.window_pts)
        return [ordered[i] for i in torch.linspace(0, len(ordered) - 1, count).long().tolist()]

    def frame_at(self, pts: int) -> av.VideoFrame | None:
        """The kept frame with ``pts``, or None if it was not kept."""
        for pick in (self.first, self.last, self.before, self.after):
            if pick is not None and pick[0] == pts:
                return pick[1]
        return self.kept.get(pts)

    def holds(self, picks: list[int]) -> bool:
        """Whether the frames of every pts in ``picks`` were kept."""
        return all(self.frame_at(pts) is not None for pts in picks)

    def nearest(self) -> Pick:
        """The decoded frame nearest to the window in time, for a window without frames."""
        nearest = self.before
        if self.after is not None and (
            nearest is None or self.after[0] - (self.stop_pts - 1) < self.first_pts - nearest[0]
        ):
            nearest = self.after
        if nearest is None:
            raise MediaError("video has no frames")
        return nearest


def decode_clip_frames(
    container: av.container.InputContainer,
    stream,
    windows: list[tuple[int, int]],
    keep: list[list[int]] | None = None,
    limits: DecodeLimits = NO_LIMITS,
) -> list[ClipFrames]:
    """Decode ``stream`` once, offering every frame to each window's :class:`ClipFrames`.

    Each clip keeps its first and last frame, and the frames whose pts its entry
    of ``keep`` lists.
    """
    keep = keep or [[] for _ in windows]
    clips = [
        ClipFrames(first, stop, frozenset(pts))
        for (first, stop), pts in zip(windows, keep, strict=True)
    ]
    stop_all = max(stop for _, stop in windows)
    seen = False
    try:
        for pts, frame in decoded_frames(container, stream, limits):
            seen = True
            for clip in clips:
                clip.offer(pts, frame)
            if pts >= stop_all:
                break  # past the last clip: no more frames are needed
    finally:
        # Let the decoder threads finish the packets they still hold, with the GIL
        # released. Freed while busy, a threaded decoder waits for them holding the
        # GIL, and deadlocks if one of them logs through PyAV's Python log callback
        # (enabled once torchvision is imported).
        stream.codec_context.flush_buffers()
    if not seen:
        raise MediaError("video has no frames")
    return clips


def decoded_frames(
    container: av.container.InputContainer, stream, limits: DecodeLimits = NO_LIMITS
) -> Iterator[Pick]:
    """(pts, frame) in decoding order; damaged packets are skipped.

    A frame without a timestamp is given the previous one's plus one tick. A
    frame over the size limits, or bigger than ``limits`` allow, is an error;
    the deadline passing stops decoding.
    """
    stream.codec_context.thread_count = DECODE_THREADS
    stream.thread_type = "AUTO"
    previous: int | None = None
    size = (stream.codec_context.width, stream.codec_context.height)
    for frame in stream_frames(container, stream, "video"):
        limits.check_deadline("video")
        if (frame.width, frame.height) != size:  # a header without a size, or a lying one
            size = (frame.width, frame.height)
            check_frame_size(*size)
            limits.check_bytes(frames_cost(*size, frame.format.name), "video")
        pts = frame.pts
        if pts is None:
            pts = (stream.start_time or 0) if previous is None else previous + 1
        previous = pts
        yield pts, frame


def frames_to_views(clips: list[ClipFrames], picks: list[list[int]], size: int) -> torch.Tensor:
    """The picked frames of each clip -> (15, 3, frames, size, size): 3 crops per clip, in order."""
    crops_of: dict[int, list[torch.Tensor]] = {}  # per decoded frame, computed once
    views = []
    for clip, chosen in zip(clips, picks, strict=True):
        frame_crops = []
        for pts in chosen:
            frame = clip.frame_at(pts)
            if frame is None:  # a decoder that gives other frames on the second pass
                raise MediaError("video decodes differently each time it is read")
            if id(frame) not in crops_of:
                resized = short_side_resize(to_unit_rgb(frame), size)
                crops_of[id(frame)] = three_crops(normalise(resized), size)
            frame_crops.append(crops_of[id(frame)])
        for crop in range(VIDEO_CROPS):
            views.append(torch.stack([crops[crop] for crops in frame_crops], dim=1))
    return torch.stack(views)


def to_unit_rgb(frame: av.VideoFrame) -> torch.Tensor:
    """A decoded frame as float32 RGB (3, H, W) in [0, 1]."""
    try:
        rgb = frame.to_ndarray(format="rgb24")
    except Exception as exc:
        raise MediaError("a video frame could not be converted to RGB") from exc
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def short_side_resize(image: torch.Tensor, size: int = IMAGEBIND_HUGE.image_size) -> torch.Tensor:
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


def three_crops(image: torch.Tensor, size: int = IMAGEBIND_HUGE.image_size) -> list[torch.Tensor]:
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
