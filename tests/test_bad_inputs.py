"""Every modality's bad input gets one error that names the item and the reason."""

from __future__ import annotations

import pytest

from ib_vectorizer.errors import InputError
from ib_vectorizer.preprocess import Preprocessor

from .fixture_data import INPUTS

VALID = {
    "vision": INPUTS / "image_rgb.jpg",
    "audio": INPUTS / "tone_16k_mono.wav",
    "video": INPUTS / "video_a.mp4",
    "depth": INPUTS / "depth_a.png",
    "thermal": INPUTS / "thermal_b.png",
    "imu": INPUTS / "imu_1500.csv",
}
NOUN = {
    "vision": "image",
    "audio": "audio",
    "video": "video",
    "depth": "depth image",
    "thermal": "thermal image",
    "imu": "IMU",
}
PNG = (INPUTS / "image_gray.png").read_bytes()
PREPROCESSOR = Preprocessor()


@pytest.mark.parametrize("modality", sorted(VALID))
def test_empty_bytes(modality):
    with pytest.raises(InputError) as info:
        PREPROCESSOR.load_item(modality, b"", index=4)
    assert str(info.value) == f"{modality}[4]: {NOUN[modality]} file is empty (0 bytes)"
    assert info.value.modality == modality and info.value.index == 4


@pytest.mark.parametrize("modality", ["vision", "audio", "video", "depth", "thermal"])
def test_truncated_file(modality):
    data = VALID[modality].read_bytes()
    with pytest.raises(InputError, match=rf"^{modality}\[1\]: not a decodable"):
        PREPROCESSOR.load_item(
            modality, data[: len(data) // 3 if modality != "audio" else 40], index=1
        )


@pytest.mark.parametrize(
    ("modality", "data"),
    [
        ("vision", b"%PDF-1.4 not an image at all"),
        ("depth", b"\x00\x01\x02" * 100),
        ("thermal", b"hello thermal"),
        ("audio", PNG),
        ("video", PNG),
        ("imu", PNG),
    ],
)
def test_wrong_format(modality, data):
    with pytest.raises(InputError, match=rf"^{modality}\[0\]: "):
        PREPROCESSOR.load_item(modality, data)


def test_audio_given_a_still_image_says_so():
    with pytest.raises(InputError, match=r"audio\[0\]: (not a decodable audio file|no audio)"):
        PREPROCESSOR.load_item("audio", PNG)


def test_imu_with_five_columns_or_nan():
    five = b"a,b,c,d,e\n" + b"1,2,3,4,5\n" * 10
    with pytest.raises(
        InputError, match=r"^imu\[2\]: IMU CSV data row 1 has 5 columns; expected 6"
    ):
        PREPROCESSOR.load_item("imu", five, index=2)
    nan = b"a,b,c,d,e,f\n" + b"1,2,3,4,5,6\n" * 3 + b"1,nan,3,4,5,6\n"
    with pytest.raises(InputError, match=r"^imu\[0\]: IMU data has NaN or infinite values"):
        PREPROCESSOR.load_item("imu", nan)


def test_text_that_is_not_text():
    with pytest.raises(InputError, match=r"^text\[3\]: text must be a string, not int"):
        PREPROCESSOR.load_item("text", 7, index=3)


def test_batch_names_the_bad_item_by_its_position_in_the_whole_list():
    good = VALID["vision"].read_bytes()
    with pytest.raises(InputError, match=r"^vision\[11\]: "):
        PREPROCESSOR.load_batch("vision", [good, b"junk"], first_index=10)
