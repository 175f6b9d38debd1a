"""Long audio and video as segments: the cutting rule, streaming decode, ingest, query, re-runs."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from weaviate.classes.query import Filter

from benchmarks.scale_dataset import write_long_recording
from ib_vectorizer.errors import MediaError
from ib_vectorizer.preprocess.audio import load_audio
from ib_vectorizer.preprocess.segments import (
    SegmentRule,
    audio_segments,
    open_bytes,
    video_segments,
)
from ib_vectorizer.preprocess.video import (
    clip_windows,
    decode_clip_frames,
    first_video_stream,
    frames_to_views,
    load_video,
    open_video,
)
from pipelines.query import main as query_main

from .media import encode_video, tone, wav_bytes
from .test_ingest import count, run_ingest

RATE = 44_100


# -- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "overlap", "duration", "expected"),
    [
        (10, 0, 25, [(0, 10), (10, 20), (20, 25)]),
        (10, 0, 20, [(0, 10), (10, 20)]),  # ends exactly on a boundary: no empty segment
        (10, 2, 18, [(0, 10), (8, 18)]),
        (10, 2, 19, [(0, 10), (8, 18), (16, 19)]),
        (10, 0, 3, [(0, 3)]),  # shorter than one segment: one, the whole media
        (2.5, 0.5, 5, [(0, 2.5), (2, 4.5), (4, 5)]),
    ],
)
def test_segment_bounds(seconds, overlap, duration, expected):
    got = SegmentRule(seconds, overlap).bounds(duration)
    assert [(float(a), float(b)) for a, b in got] == [(float(a), float(b)) for a, b in expected]


@pytest.mark.parametrize(("seconds", "overlap"), [(0, 0), (-1, 0), (5, 5), (5, -1)])
def test_impossible_rules_are_refused(seconds, overlap):
    with pytest.raises(ValueError, match="segment"):
        SegmentRule(seconds, overlap)


# -- streaming decode ----------------------------------------------------------------------------


def noise(seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (channels, round(seconds * RATE)))


def test_an_audio_segment_embeds_like_a_file_of_just_its_samples():
    waveform = noise(25.3)
    rule = SegmentRule(10, 2)
    segments = list(audio_segments(open_bytes(wav_bytes(waveform, RATE)), rule))
    assert [(s.start_s, s.end_s, s.last) for s in segments] == [
        (0.0, 10.0, False),
        (8.0, 18.0, False),
        (16.0, waveform.shape[1] / RATE, True),
    ]
    for segment in segments:
        first, stop = round(segment.start_s * RATE), round(segment.end_s * RATE)
        expected = load_audio(wav_bytes(waveform[:, first:stop], RATE))
        assert (segment.input - expected).abs().max().item() == 0.0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (wav_bytes(np.zeros((1, 16000)), 16000)[:20000], "truncated"),
        (b"RIFF" + bytes(range(256)) * 40, "not a decodable audio file"),
    ],
)
def test_bad_recordings_are_refused_before_any_segment(data, reason):
    with pytest.raises(MediaError, match=reason):
        next(audio_segments(open_bytes(data), SegmentRule(10)))


def moving_video(seconds: int, fps: int = 10) -> bytes:
    frames = []
    for i in range(seconds * fps):
        frame = np.zeros((64, 96, 3), np.uint8)
        frame[:, :, 0] = (i * 7) % 256
        frame[10:30, (i * 3) % 70 : (i * 3) % 70 + 20] = 255
        frames.append(frame)
    return encode_video(frames, fps)


def test_a_video_segment_follows_the_clip_rule_inside_its_range():
    data = moving_video(9)
    rule = SegmentRule(4, 1)
    segments = list(video_segments(open_bytes(data), rule))
    assert [(s.start_s, s.end_s, s.last) for s in segments] == [
        (0.0, 4.0, False),
        (3.0, 7.0, False),
        (6.0, 9.0, True),
    ]
    for segment in segments:  # the same windows decoded the whole-file way
        with open_video(data) as container:
            stream = first_video_stream(container)
            start = Fraction(segment.start_s)
            windows = clip_windows(
                segment.end_s - segment.start_s, stream.time_base, stream.start_time or 0, start
            )
            clips = decode_clip_frames(container, stream, windows)
            picks = [clip.picks(2) for clip in clips]
            expected = frames_to_views(clips, picks, 224)
        assert (segment.input - expected).abs().max().item() == 0.0


def test_one_segment_longer_than_the_media_is_the_whole_file_input():
    data = moving_video(5)
    (only,) = video_segments(open_bytes(data), SegmentRule(60))
    assert (only.input - load_video(data)).abs().max().item() == 0.0
    audio = wav_bytes(noise(7.0), RATE)
    (only,) = audio_segments(open_bytes(audio), SegmentRule(60))
    assert (only.input - load_audio(audio)).abs().max().item() == 0.0


def test_more_frames_per_clip_take_a_second_pass_and_keep_the_shape():
    segments = list(video_segments(open_bytes(moving_video(6)), SegmentRule(3), 32, 4))
    assert [tuple(s.input.shape) for s in segments] == [(15, 3, 4, 32, 32)] * 2


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    from ib_vectorizer.preprocess.segments import SegmentRule, audio_segments
    rule = SegmentRule(10)
    count = sum(1 for _ in audio_segments(lambda: open(sys.argv[1], "rb"), rule))
    peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(count, int(peak.split()[1]) * 1024)
    """
)


def peak_of_segmenting(path: Path) -> tuple[int, int]:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True
    )
    segments, peak = result.stdout.split()
    return int(segments), int(peak)


def test_memory_does_not_grow_with_the_length_of_the_recording(tmp_path):
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    write_long_recording(short, 2)
    write_long_recording(long, 30)  # decoded whole: 30 min x 48 kHz x 2 ch x float32 = 691 MB
    short_segments, short_peak = peak_of_segmenting(short)
    long_segments, long_peak = peak_of_segmenting(long)
    assert (short_segments, long_segments) == (12, 180)
    assert long_peak - short_peak < 64 * 2**20, (short_peak, long_peak)


# -- through ib-ingest and Weaviate --------------------------------------------------------------

PART_SECONDS = 5


def parts_recording(parts: int) -> tuple[bytes, list[np.ndarray]]:
    """A recording of ``parts`` distinct 5 s sounds (a chord, noise, ...), and each part."""
    pieces = []
    for i in range(parts):
        if i % 2:
            pieces.append(noise(PART_SECONDS, seed=i) * (0.2 + 0.2 * i))
        else:
            pieces.append(tone([220.0 * (i + 1), 330.0 * (i + 1)], PART_SECONDS, RATE, 0.4))
    return wav_bytes(np.concatenate(pieces, axis=1), RATE), pieces


COLOURS = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 240, 240)]


def colour_video(colours: list[tuple[int, int, int]], fps: int = 10) -> bytes:
    frames = []
    for colour in colours:
        for i in range(PART_SECONDS * fps):
            frame = np.full((64, 96, 3), colour, np.uint8)
            frame[20:40, i % 70 : i % 70 + 20] = (128, 128, 0)
            frames.append(frame)
    return encode_video(frames, fps)


@pytest.fixture
def long_media(tmp_path) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path / "media"
    (root / "audio").mkdir(parents=True)
    (root / "video").mkdir()
    recording, pieces = parts_recording(6)
    (root / "audio" / "talk.wav").write_bytes(recording)
    (root / "video" / "walk.mp4").write_bytes(colour_video(COLOURS))
    return root, pieces


def ib_query(stack, collection: str, *args: str) -> str:
    e = stack.endpoints
    out = io.StringIO()
    with redirect_stdout(out):
        code = query_main(
            ["--collection", collection, "--weaviate-url", e.weaviate_http,
             "--grpc-port", str(e.weaviate_grpc_port), *args]
        )  # fmt: skip
    assert code == 0
    return out.getvalue()


def test_segments_are_objects_found_by_a_piece_of_the_recording(
    stack, client, long_media, tmp_path, caplog
):
    root, pieces = long_media
    segment = ["--segment-seconds", str(PART_SECONDS)]
    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        assert run_ingest(stack, root, "Moments", tmp_path / "f.jsonl", *segment) == 0
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done in")][-1]
    assert "read 2 (cut into 10 segments), embedded 10, written 10, failed 0" in summary
    collection = client.collections.get("Moments")
    by_id = {o.properties["source_id"]: o.properties for o in collection.iterator()}
    assert set(by_id) == {f"audio/talk.wav#t={5 * i},{5 * i + 5}" for i in range(6)} | {
        f"video/walk.mp4#t={5 * i},{5 * i + 5}" for i in range(4)
    }
    third = by_id["audio/talk.wav#t=10,15"]
    assert third["parent_id"] == "audio/talk.wav"
    assert (third["segment_start_s"], third["segment_end_s"], third["segment_index"]) == (10, 15, 2)
    assert third["audio_uri"] == str(root / "audio" / "talk.wav")
    assert by_id["audio/talk.wav#t=25,30"]["segment_count"] == 6
    assert "audio" not in third  # the bytes of the whole file are not copied into each segment

    piece = tmp_path / "piece.wav"
    piece.write_bytes(wav_bytes(pieces[2], RATE))
    hits = [json.loads(line) for line in ib_query(stack, "Moments", "--near-audio", str(piece),
                                                  "--json").splitlines()]  # fmt: skip
    assert hits[0]["properties"]["source_id"] == "audio/talk.wav#t=10,15"
    assert hits[0]["distance"] < 1e-4
    table = ib_query(stack, "Moments", "--near-audio", str(piece), "--limit", "1")
    assert "t=10–15 s" in table and "audio/talk.wav#t=10,15" in table

    for index in range(len(COLOURS)):
        clip = tmp_path / f"clip{index}.mp4"
        clip.write_bytes(colour_video([COLOURS[index]]))
        hits = ib_query(stack, "Moments", "--near-video", str(clip), "--json").splitlines()
        top = json.loads(hits[0])["properties"]["source_id"]
        assert top == f"video/walk.mp4#t={5 * index},{5 * index + 5}"


def test_segment_reruns_redo_only_changed_sources_and_leave_no_stale_segments(
    stack, client, long_media, tmp_path, caplog
):
    root, _ = long_media
    failures = tmp_path / "f.jsonl"
    segment = ["--segment-seconds", str(PART_SECONDS)]
    collection = client.collections.get("MomentsAgain")

    def segments_of(parent: str) -> list[str]:
        found = collection.query.fetch_objects(
            filters=Filter.by_property("parent_id").equal(parent), limit=100
        )
        return sorted(o.properties["source_id"] for o in found.objects)

    def last_summary() -> str:
        messages = [r.getMessage() for r in caplog.records]
        return [m for m in messages if m.startswith("done in")][-1]

    with caplog.at_level(logging.INFO, logger="ib_ingest"):
        assert run_ingest(stack, root, "MomentsAgain", failures, *segment) == 0
        assert run_ingest(stack, root, "MomentsAgain", failures, *segment) == 0
        assert "embedded 0, written 0, failed 0, unchanged 2" in last_summary()

        # A segment lost (a job killed before writing it): that source is done again.
        lost = collection.query.fetch_objects(
            filters=Filter.by_property("source_id").equal("video/walk.mp4#t=5,10")
        ).objects[0]
        collection.data.delete_by_id(lost.uuid)
        assert run_ingest(stack, root, "MomentsAgain", failures, *segment) == 0
        assert "embedded 4, written 4, failed 0, unchanged 1" in last_summary()
        assert len(segments_of("video/walk.mp4")) == 4

        # The recording gets shorter: its old segments beyond the new end are gone.
        shorter, _ = parts_recording(3)
        (root / "audio" / "talk.wav").write_bytes(shorter)
        assert run_ingest(stack, root, "MomentsAgain", failures, *segment) == 0
        expected = [f"audio/talk.wav#t={a},{a + 5}" for a in (0, 5, 10)]
        assert segments_of("audio/talk.wav") == sorted(expected)

        # The video removed, and the recording ingested whole: no segment is left over.
        (root / "video" / "walk.mp4").unlink()
        assert run_ingest(stack, root, "MomentsAgain", failures, "--delete-missing") == 0
    assert segments_of("audio/talk.wav") == []
    assert segments_of("video/walk.mp4") == []
    assert count(client, "MomentsAgain") == 1
    assert collection.query.fetch_objects().objects[0].properties["source_id"] == "audio/talk.wav"
    assert not failures.exists() or not failures.read_text().strip()


def test_a_recording_too_long_to_decode_whole_says_to_use_segments(stack, client, tmp_path):
    root = tmp_path / "long"
    (root / "audio").mkdir(parents=True)
    minutes = 11  # past the 10-minute limit on audio decoded whole
    quiet = np.zeros((1, minutes * 60 * 8000))
    (root / "audio" / "lecture.wav").write_bytes(wav_bytes(quiet, 8000))
    failures = tmp_path / "f.jsonl"
    assert run_ingest(stack, root, "Lecture", failures) == 0
    (failure,) = [json.loads(line) for line in failures.read_text().splitlines()]
    assert failure["id"] == "audio/lecture.wav" and failure["stage"] == "decode"
    assert "longer than the limit of 600 s" in failure["error"]
    assert "--segment-seconds" in failure["error"]
    assert run_ingest(stack, root, "Lecture", failures, "--segment-seconds", "60") == 0
    assert count(client, "Lecture") == minutes
    assert not failures.read_text().strip()
