"""Long audio and video as segments: one model input per time range, decoded as a stream.

A recording of an hour is not one moment. With segments of S seconds and an
overlap of O, segment k covers ``[k·(S−O), k·(S−O) + S)``, cut at the end of
the media; segment k exists when k = 0 or segment k−1 ends before the media
does, so the last one may be short and none is empty.

Each segment is embedded with ImageBind's own clip rule applied inside it, as
if it were a file holding just that range:

- audio: the segment's samples at the file's rate, resampled to 16 kHz on
  their own, three 2 s clips spread over the segment (``audio.audio_input``);
  equal to ``load_audio`` on a WAV of those samples;
- video: five 2 s clip windows spread over the segment, offset by its start,
  two frames each and three crops, exactly as ``video.load_video`` does over a
  whole file (its duration from the header, as there).

Decoding streams through the file once and keeps only what open segments
need: for audio, the samples from the oldest open segment's start (S seconds
at most, whatever the file's length); for video, a few frames per open clip.
The file is read through a function that opens it, so a path, a Beam
``FileSystems`` handle (gs://, s3://) or bytes in memory all work, and no
limit on the length applies; what is held at once (a segment's samples, the
frames in flight) stays within the item limit given as ``limits``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import numpy as np
import torch

from ..errors import MediaError
from .audio import audio_input, float_chunks, open_audio
from .config import IMAGEBIND_HUGE
from .limits import NO_LIMITS, DecodeLimits
from .video import (
    ClipFrames,
    clip_windows,
    decoded_frames,
    first_video_stream,
    frames_to_views,
    open_video,
    video_duration,
)
from .wav import check_wav_not_truncated

Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class SegmentRule:
    """Segments of ``seconds`` overlapping by ``overlap`` seconds."""

    seconds: float
    overlap: float = 0.0

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"segment length must be positive, not {self.seconds:g} s")
        if not 0 <= self.overlap < self.seconds:
            raise ValueError(
                f"segment overlap must be at least 0 and less than the segment length "
                f"({self.seconds:g} s), not {self.overlap:g} s"
            )

    @property
    def step(self) -> Fraction:
        return Fraction(self.seconds) - Fraction(self.overlap)

    def start(self, index: int) -> Fraction:
        return index * self.step

    def bounds(self, duration: Fraction | float) -> list[tuple[Fraction, Fraction]]:
        """``[start, end)`` in seconds of every segment of media ``duration`` seconds long."""
        duration = Fraction(duration)
        length = Fraction(self.seconds)
        spans = []
        index = 0
        while index == 0 or spans[-1][1] < duration:
            start = self.start(index)
            spans.append((start, min(start + length, duration)))
            index += 1
        return spans


@dataclass
class Segment:
    """One segment's time range and model input; ``last`` marks the media's final segment."""

    index: int
    start_s: float
    end_s: float
    input: torch.Tensor
    last: bool = False


def open_bytes(data: bytes) -> Opener:
    """An opener for media already in memory."""
    return lambda: io.BytesIO(data)


# -- audio ---------------------------------------------------------------------------------------


def audio_segments(
    opener: Opener,
    rule: SegmentRule,
    num_mel_bins: int = IMAGEBIND_HUGE.audio_num_mel_bins,
    target_len: int = IMAGEBIND_HUGE.audio_target_len,
    limits: DecodeLimits = NO_LIMITS,
) -> Iterator[Segment]:
    """The segments of an audio file, each as soon as decoding has passed its end."""
    with opener() as handle:
        head = handle.read(1 << 16)
        if not head:
            raise MediaError("audio file is empty (0 bytes)")
        try:
            size = handle.seek(0, io.SEEK_END)
        except (OSError, ValueError):  # a stream that cannot tell its size: no WAV check
            size = None
        if size is not None:
            check_wav_not_truncated(head, size)
        handle.seek(0)
        with open_audio(handle) as (container, stream):
            yield from _audio_segments(container, stream, rule, num_mel_bins, target_len, limits)


class _SampleWindow:
    """Decoded samples from some first sample on, in the chunks the decoder gave."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, np.ndarray]] = []  # (index of its first sample, samples)
        self.end = 0  # samples decoded so far
        self.bytes = 0  # held in ``chunks``

    def append(self, chunk: np.ndarray) -> None:
        self.chunks.append((self.end, chunk))
        self.end += chunk.shape[1]
        self.bytes += chunk.nbytes

    def slice(self, first: int, stop: int) -> torch.Tensor:
        parts = [
            chunk[:, max(first - at, 0) : max(stop - at, 0)]
            for at, chunk in self.chunks
            if at < stop and at + chunk.shape[1] > first
        ]
        return torch.from_numpy(np.concatenate(parts, axis=1))

    def drop_before(self, first: int) -> None:
        self.chunks = [(at, c) for at, c in self.chunks if at + c.shape[1] > first]
        self.bytes = sum(chunk.nbytes for _, chunk in self.chunks)


def _audio_segments(
    container, stream, rule, num_mel_bins, target_len, limits: DecodeLimits
) -> Iterator[Segment]:
    window = _SampleWindow()
    rate = 0
    index = 0  # the next segment to emit

    def sample_at(seconds: Fraction) -> int:
        return math.floor(seconds * rate)

    def segment(first: int, stop: int, last: bool) -> Segment:
        samples = window.slice(first, stop)
        return Segment(
            index,
            first / rate,
            stop / rate,
            audio_input(samples, rate, num_mel_bins, target_len),
            last,
        )

    for chunk_rate, chunk in float_chunks(container, stream):
        rate = chunk_rate  # the same for every chunk; sample_at and segment read it
        window.append(chunk)
        limits.check_bytes(2 * window.bytes, "audio segment")  # and its joined copy
        # A segment whose end lies before the decoded end is complete and not the last.
        while sample_at(rule.start(index) + Fraction(rule.seconds)) < window.end:
            first = sample_at(rule.start(index))
            stop = sample_at(rule.start(index) + Fraction(rule.seconds))
            yield segment(first, stop, last=False)
            index += 1
            window.drop_before(sample_at(rule.start(index)))
    if window.end == 0:
        raise MediaError("audio is empty (0 samples)")
    # The rest: every segment that starts before the end, if the one before did not reach it.
    while index == 0 or sample_at(rule.start(index - 1) + Fraction(rule.seconds)) < window.end:
        first = sample_at(rule.start(index))
        stop = min(sample_at(rule.start(index) + Fraction(rule.seconds)), window.end)
        last = stop >= window.end
        yield segment(first, stop, last)
        index += 1
        if last:
            break


# -- video ---------------------------------------------------------------------------------------


def video_segments(
    opener: Opener,
    rule: SegmentRule,
    size: int = IMAGEBIND_HUGE.image_size,
    frames_per_clip: int = IMAGEBIND_HUGE.video_frames,
    limits: DecodeLimits = NO_LIMITS,
) -> Iterator[Segment]:
    """The segments of a video, each as soon as decoding has passed its last clip.

    With two frames per clip (imagebind_huge) one pass decodes the video; with
    more, a first pass records which frames each clip has, so that the second
    can keep only the picked ones.
    """
    with opener() as handle, open_video(handle) as container:
        stream = first_video_stream(container)
        duration = video_duration(opener, container, stream)
        plans = _segment_windows(rule, duration, stream)
        if frames_per_clip == 2:
            yield from _video_pass(container, stream, plans, None, size, frames_per_clip, limits)
            return
        picks = [
            [clip.picks(frames_per_clip) for clip in clips]
            for _, clips in _scan(container, stream, plans, limits=limits)
        ]
    with opener() as handle, open_video(handle) as container:
        stream = first_video_stream(container)
        yield from _video_pass(container, stream, plans, picks, size, frames_per_clip, limits)


@dataclass
class _SegmentWindows:
    index: int
    start: Fraction
    end: Fraction
    windows: list[tuple[int, int]]  # pts windows of its five clips
    last: bool

    @property
    def first_pts(self) -> int:
        return min(first for first, _ in self.windows)

    @property
    def stop_pts(self) -> int:
        return max(stop for _, stop in self.windows)


def _segment_windows(rule: SegmentRule, duration: float, stream) -> list[_SegmentWindows]:
    spans = rule.bounds(Fraction(duration))
    start_pts = stream.start_time or 0
    return [
        _SegmentWindows(
            index,
            start,
            end,
            clip_windows(float(end - start), stream.time_base, start_pts, offset=start),
            last=index == len(spans) - 1,
        )
        for index, (start, end) in enumerate(spans)
    ]


def _scan(
    container, stream, plans, keep=None, limits: DecodeLimits = NO_LIMITS
) -> Iterator[tuple[_SegmentWindows, list]]:
    """Decode once; yield each segment with its ClipFrames as soon as the stream passes it."""
    pending = list(plans)
    open_clips: list[tuple[_SegmentWindows, list[ClipFrames]]] = []
    previous = None
    try:
        for pts, frame in decoded_frames(container, stream, limits):
            while pending and pending[0].first_pts <= pts:  # the stream reaches a segment
                plan = pending.pop(0)
                picks = keep[plan.index] if keep else [[] for _ in plan.windows]
                clips = [
                    ClipFrames(first, stop, frozenset(chosen))
                    for (first, stop), chosen in zip(plan.windows, picks, strict=True)
                ]
                if previous is not None:
                    for clip in clips:
                        clip.offer(*previous)
                open_clips.append((plan, clips))
            for _, clips in open_clips:
                for clip in clips:
                    clip.offer(pts, frame)
            while open_clips and pts >= open_clips[0][0].stop_pts:
                yield open_clips.pop(0)
            previous = (pts, frame)
            if not pending and not open_clips:
                break  # past the last clip
    finally:
        stream.codec_context.flush_buffers()  # see video.decode_clip_frames
    if previous is None:
        raise MediaError("video has no frames")
    for plan in pending:  # the header promised more than the stream holds
        clips = [ClipFrames(first, stop) for first, stop in plan.windows]
        for clip in clips:
            clip.offer(*previous)
        open_clips.append((plan, clips))
    yield from open_clips


def _video_pass(
    container, stream, plans, keep, size, frames_per_clip, limits: DecodeLimits
) -> Iterator[Segment]:
    for plan, clips in _scan(container, stream, plans, keep, limits):
        picks = [clip.picks(frames_per_clip) for clip in clips]
        if not all(clip.holds(chosen) for clip, chosen in zip(clips, picks, strict=True)):
            raise MediaError("video decodes differently each time it is read")
        yield Segment(
            plan.index,
            float(plan.start),
            float(plan.end),
            frames_to_views(clips, picks, size),
            plan.last,
        )
