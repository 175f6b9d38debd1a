"""Video bytes -> (15, 3, 2, 224, 224): parity with the reference, then the rules on new inputs.

Synthetic videos give every frame a colour that encodes its index
(:func:`tests.media.index_colour`), so each view tells which frames it came from.
"""

from __future__ import annotations

import io
import math
import re
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.constants import CLIP_MEAN, CLIP_STD
from ib_vectorizer.preprocess.video import (
    clip_windows,
    last_packet_end,
    load_video,
    short_side_resize,
    three_crops,
)

from .fixture_data import fixture_files
from .media import (
    colour_index,
    encode_video,
    index_colour,
    indexed_frames,
    png_bytes,
    ramp_frame,
    tone,
    wav_bytes,
)

SHAPE = (15, 3, 2, 224, 224)
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def to_pixels(view: torch.Tensor) -> torch.Tensor:
    """Undo the CLIP normalisation of one (3, 224, 224) crop: RGB in 0..255."""
    return (view * STD + MEAN) * 255


def clip_frame_indices(video: torch.Tensor) -> list[tuple[int, ...]]:
    """The frame indices of each clip (first and last of two), read back from the colours."""
    result = []
    for clip in range(5):
        pair = []
        for t in range(video.shape[2]):
            for crop in range(3):  # every crop of a uniform frame shows the same colour
                rgb = to_pixels(video[3 * clip + crop, :, t]).mean(dim=(1, 2)).numpy()
                if crop == 0:
                    index = colour_index(rgb)
                assert colour_index(rgb) == index
            pair.append(index)
        result.append(tuple(pair))
    return result


def frames_by_rule(data: bytes, count: int = 2) -> list[tuple[int, ...]]:
    """The same indices computed independently, straight from the rule: ``count`` per clip."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        pts = [frame.pts for frame in container.decode(stream)]
        start = stream.start_time or 0
        if stream.duration:
            duration = float((stream.duration - start) * stream.time_base)
        else:  # WebM: no stream duration; the container's
            duration = container.duration / 1_000_000
        time_base = stream.time_base
    result = []
    for i in range(5):
        begin = Fraction(max(duration - 2, 0)) / 5 * i
        low = math.ceil(begin / time_base) + start
        high = math.ceil((begin + 2) / time_base) + start
        inside = [k for k, p in sorted(enumerate(pts), key=lambda kp: kp[1]) if low <= p < high]
        picks = torch.linspace(0, len(inside) - 1, count).long()
        result.append(tuple(inside[i] for i in picks))
    return result


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- parity with the reference ------------------------------------------------


def test_matches_reference_preprocessing(manifest, preprocessed):
    # Measured: max abs diff 0.0 on both files with the pinned PyAV. Another FFmpeg
    # may round YUV -> RGB differently (1 level = 0.015 here), so the bound allows
    # about 2.5 levels; picking a neighbouring frame instead shows as 2.9 .. 3.7.
    for row, path in enumerate(fixture_files(manifest, "video")):
        got = load_video(path.read_bytes())
        assert got.shape == SHAPE and got.dtype == torch.float32, path.name
        ref = preprocessed["video"][row]
        diff = np.abs(got.numpy() - ref)
        assert diff.max() <= 0.04, f"{path.name}: max abs diff {diff.max()}"
        assert diff.mean() <= 2e-3, f"{path.name}: mean abs diff {diff.mean()}"
        worst = min(cosine(v, r) for v, r in zip(got.numpy(), ref, strict=True))
        assert worst >= 0.9999, f"{path.name}: worst per-view cosine {worst}"


# --- clip timing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "width", "height"),
    [
        ("mp4", 64, 48),
        ("mp4", 48, 64),  # portrait
        ("mov", 64, 48),
        ("webm", 64, 48),  # VP9, no stream duration: the container's is used
        ("webm-vp8", 48, 64),
    ],
)
def test_seven_seconds_at_8_fps_takes_the_right_frames(kind, width, height):
    # D = 7 s: clips start at i * (7 - 2) / 5 = 0, 1, 2, 3, 4 s and last 2 s, so
    # clip k holds frames 8k .. 8k + 15 (frame n is shown at n / 8 s).
    data = encode_video(indexed_frames(56, width, height), fps=8, kind=kind)
    video = load_video(data)
    assert video.shape == SHAPE and torch.isfinite(video).all()
    assert clip_frame_indices(video) == [(8 * k, 8 * k + 15) for k in range(5)]


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_frames_follow_the_pts_rule_with_uneven_starts(kind):
    # D = 7.3 s at 10 fps: starts i * 1.06 s fall between frames, so ceil matters.
    data = encode_video(indexed_frames(73, 64, 48), fps=10, kind=kind)
    expected = frames_by_rule(data)
    assert expected[1] == (11, 30)  # [1.06 s, 3.06 s) -> frames 1.1 s .. 3.0 s
    assert clip_frame_indices(load_video(data)) == expected


@pytest.mark.parametrize("kind", ["mp4", "webm"])
@pytest.mark.parametrize("count", [1, 3, 4, 6])
def test_other_frame_counts_are_taken_at_linspace(kind, count):
    # T = 20 or 21 frames per clip: the picks fall between the first and the last.
    data = encode_video(indexed_frames(73, 64, 48), fps=10, kind=kind)
    video = load_video(data, size=48, frames_per_clip=count)
    assert video.shape == (15, 3, count, 48, 48)
    assert clip_frame_indices(video) == frames_by_rule(data, count)


def test_clip_windows_use_ceil_and_start_time():
    tb = Fraction(1, 16384)
    assert clip_windows(7.0, tb, 0) == [(16384 * k, 16384 * (k + 2)) for k in range(5)]
    assert clip_windows(7.0, tb, 500) == [
        (16384 * k + 500, 16384 * (k + 2) + 500) for k in range(5)
    ]
    # 2.3 - 2 is 0.29999999999999982 as a float: start 1 is 59.99.. ms -> pts 60 (ceil).
    assert clip_windows(2.3, Fraction(1, 1000), 0)[1] == (60, 2060)
    # Shorter than 2 s: every clip is [0, 2 s).
    assert clip_windows(0.5, Fraction(1, 1000), 0) == [(0, 2000)] * 5


def test_half_second_video_uses_all_frames_in_every_clip():
    data = encode_video(indexed_frames(4, 64, 48), fps=8)
    video = load_video(data)
    assert video.shape == SHAPE
    assert clip_frame_indices(video) == [(0, 3)] * 5
    for view in range(3, 15):
        assert torch.equal(video[view], video[view % 3])


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_one_frame_video_uses_that_frame_everywhere(kind):
    video = load_video(encode_video(indexed_frames(1, 48, 64), fps=8, kind=kind))
    assert video.shape == SHAPE
    assert clip_frame_indices(video) == [(0, 0)] * 5
    assert torch.equal(video[:, :, 0], video[:, :, 1])
    for view in range(3, 15):
        assert torch.equal(video[view], video[view % 3])


def test_clip_past_the_decoded_frames_uses_the_nearest_frame():
    # A WebM cut in half keeps its 7 s header: clip 4 ([4 s, 6 s)) has no frame left.
    whole = encode_video(indexed_frames(56, 64, 48), fps=8, kind="webm")
    cut = whole[: len(whole) // 2]
    with av.open(io.BytesIO(cut)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert 1 < decoded < 32  # the cut leaves less than 4 s
    video = load_video(cut)
    assert video.shape == SHAPE and torch.isfinite(video).all()
    assert clip_frame_indices(video)[4] == (decoded - 1, decoded - 1)


def test_last_packet_end_is_the_stream_length():
    data = encode_video(indexed_frames(56, 64, 48), fps=8)
    assert last_packet_end(data) == pytest.approx(7.0)


def test_mpeg4_part_2_decodes():
    video = load_video(encode_video(indexed_frames(12, 64, 48), fps=8, kind="mp4-mpeg4"))
    assert video.shape == SHAPE and torch.isfinite(video).all()


# --- resizing and crops -------------------------------------------------------


def test_short_side_resize_floors_the_long_side():
    assert short_side_resize(torch.rand(3, 48, 100)).shape == (3, 224, 466)  # 100/48*224 = 466.7
    assert short_side_resize(torch.rand(3, 100, 48)).shape == (3, 466, 224)
    assert short_side_resize(torch.rand(3, 300, 300)).shape == (3, 224, 224)


def test_three_crops_offsets():
    image = torch.arange(466, dtype=torch.float32).expand(3, 224, 466)
    crops = three_crops(image)
    assert [int(c[0, 0, 0]) for c in crops] == [0, 121, 242]  # 0, ceil(242 / 2), 466 - 224
    assert [int(c[0, 0, 0]) for c in three_crops(image.transpose(1, 2))] == [0, 121, 242]


@pytest.mark.parametrize(("width", "height"), [(100, 48), (48, 100)])
def test_crops_run_along_the_long_side(width, height):
    horizontal = width > height
    frames = [ramp_frame(width, height, horizontal)] * 8
    video = load_video(encode_video(frames, fps=8))
    assert video.shape == SHAPE
    # Long side 466 -> offsets 0, 121, 242: neighbouring crops overlap by 103 pixels.
    long_axis, short_axis = (2, 1) if horizontal else (1, 2)  # axes of one (3, 224, 224) crop
    start, centre, end = (video[crop, :, 0] for crop in range(3))
    assert torch.equal(start.narrow(long_axis, 121, 103), centre.narrow(long_axis, 0, 103))
    assert torch.equal(centre.narrow(long_axis, 121, 103), end.narrow(long_axis, 0, 103))
    brightness = [float(to_pixels(video[crop, :, 0]).mean()) for crop in range(3)]
    assert brightness[0] + 20 < brightness[1] < brightness[2] - 20  # dark start, bright end
    # The ramp runs along the long side only: across it the crop is flat.
    assert float(start.std(dim=short_axis).max()) < 0.05


def test_square_video_gives_three_equal_crops():
    video = load_video(encode_video([np.full((64, 64, 3), index_colour(3), np.uint8)] * 8, fps=8))
    assert torch.equal(video[0], video[1]) and torch.equal(video[1], video[2])


# --- bad input and limits -------------------------------------------------------


def _seven_seconds() -> bytes:
    return encode_video(indexed_frames(56, 64, 48), fps=8)


def test_video_over_the_limit_is_refused():
    data = _seven_seconds()
    with pytest.raises(MediaError, match=r"^video is 7 s long; the limit is 5 s$"):
        load_video(data, max_seconds=5)
    with pytest.raises(MediaError, match=r"^video is 7 s long; the limit is 6\.5 s$"):
        load_video(data, max_seconds=6.5)
    assert load_video(data, max_seconds=7).shape == SHAPE


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"", "video file is empty (0 bytes)"),
        (lambda: _seven_seconds()[:100], "not a decodable video file"),
        (lambda: _seven_seconds()[:2000], "not a decodable video file"),  # no moov atom
        (png_bytes, "not a video file (a still image)"),
        (lambda: np.random.default_rng(2).bytes(4096), "not a decodable video file"),
        (lambda: wav_bytes(tone([440.0], 1.0, 16_000), 16_000), "no video stream"),
    ],
    ids=["empty", "truncated-100", "truncated-2000", "png", "random", "wav"],
)
def test_bad_input_raises_media_error(make, message):
    with pytest.raises(MediaError, match="^" + re.escape(message) + "$"):
        load_video(make())


def test_webm_header_only_has_no_frames():
    whole = encode_video(indexed_frames(8, 64, 48), fps=8, kind="webm")
    with av.open(io.BytesIO(whole)) as container:
        first_packet = next(p for p in container.demux(video=0) if p.size)
        header_end = first_packet.pos
    with pytest.raises(MediaError, match=r"^video has no frames$"):
        load_video(whole[:header_end])
