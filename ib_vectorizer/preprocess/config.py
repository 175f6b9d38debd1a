"""The input geometry a model takes, read from its config, and what preprocessing refuses.

A model config (:class:`~ib_vectorizer.model.ImageBindConfig`) fixes the shape of
every input: the image size, the text context length, the mel bins and frames of
an audio clip, the frames of a video clip, the samples of an IMU recording.
:class:`PreprocessConfig` holds exactly those sizes; build it with
:meth:`PreprocessConfig.from_model` so preprocessing and model cannot disagree.
What no model config changes (the CLIP mean and std, 16 kHz, clip counts and
lengths, crops, fbank normalisation) is in :mod:`.constants`.

Some config fields preprocessing cannot follow: the input formats and the
tokenizer fix them, or the model's stems would drop part of the input. A config
that changes them is refused with the field's name and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..model.config import ImageBindConfig

# The IMU CSV columns and .npy rows, in this order (Ego4D's).
IMU_CHANNEL_NAMES = ("gyro_x", "gyro_y", "gyro_z", "accl_x", "accl_y", "accl_z")
IMU_CHANNELS = len(IMU_CHANNEL_NAMES)
# open_clip's CLIP BPE: 256 byte tokens, the same with an end-of-word mark,
# 48894 merges, then start- and end-of-text (49406, 49407).
CLIP_VOCAB_SIZE = 49408
# Kaldi's mel filter bank needs more than three bins.
MIN_MEL_BINS = 4


@dataclass(frozen=True)
class PreprocessConfig:
    """The sizes preprocessing follows, named as (and taken from) the model config.

    ``image_size``: images, depth and thermal maps and video crops are
    ``image_size`` pixels square. ``context_length``: token ids per text, the
    end-of-text token always last. ``audio_num_mel_bins`` × ``audio_target_len``:
    one audio clip's fbank. ``video_frames``: frames taken from each video clip,
    at ``linspace(0, T - 1, video_frames)``. ``imu_samples``: samples per IMU
    channel.
    """

    image_size: int
    context_length: int
    audio_num_mel_bins: int
    audio_target_len: int
    video_frames: int
    imu_samples: int

    def __post_init__(self) -> None:
        smallest = {"context_length": 2, "audio_num_mel_bins": MIN_MEL_BINS}
        why = {
            "context_length": "a text needs its start- and end-of-text tokens",
            "audio_num_mel_bins": "Kaldi's mel filter bank needs more than three bins",
        }
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            least = smallest.get(f.name, 1)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{f.name} must be a whole number, not {value!r}")
            elif value < least:
                reason = f": {why[f.name]}" if f.name in why else ""
                problems.append(f"{f.name} must be at least {least}, not {value}{reason}")
        if problems:
            raise ValueError("preprocessing cannot follow this config: " + "; ".join(problems))

    @classmethod
    def from_model(cls, config: ImageBindConfig) -> PreprocessConfig:
        """The geometry of ``config``; ValueError names each field preprocessing cannot follow."""
        geometry = cls(
            image_size=config.image_size,
            context_length=config.context_length,
            audio_num_mel_bins=config.audio_num_mel_bins,
            audio_target_len=config.audio_target_len,
            video_frames=config.video_frames,
            imu_samples=config.imu_samples,
        )
        problems = _model_problems(config)
        if problems:
            raise ValueError(
                "preprocessing cannot follow this model config: " + "; ".join(problems)
            )
        return geometry


def _model_problems(config: ImageBindConfig) -> list[str]:
    """Why preprocessing cannot feed a model built from ``config`` (empty if it can).

    The sizes themselves are whole and large enough (checked by
    :class:`PreprocessConfig`); these are the checks that need the model's fields.
    """
    problems = []
    if config.imu_channels != IMU_CHANNELS:
        problems.append(
            f"imu_channels must be {IMU_CHANNELS}, not {config.imu_channels}: the IMU CSV and "
            f".npy formats hold six named channels ({', '.join(IMU_CHANNEL_NAMES)})"
        )
    if config.vocab_size != CLIP_VOCAB_SIZE:
        problems.append(
            f"vocab_size must be {CLIP_VOCAB_SIZE}, not {config.vocab_size}: texts are "
            "tokenized with open_clip's CLIP BPE vocabulary"
        )
    frames_kernel, patch_height, patch_width = config.kernel_size
    if patch_height != patch_width:
        problems.append(
            f"kernel_size[1:] must be a square patch, not {patch_height}x{patch_width}: images "
            "are cropped square and the vision stem's positions form a square grid"
        )
    size = config.image_size
    for name, patch, stem in (
        ("kernel_size[1:]", patch_height, "vision"),
        ("depth_kernel_size", config.depth_kernel_size, "depth"),
        ("thermal_kernel_size", config.thermal_kernel_size, "thermal"),
    ):
        if not _fits(size, patch):
            problems.append(
                f"image_size ({size}) must be a multiple of {name} ({patch}): the {stem} stem "
                "cuts the image into patches of that size and would drop the remainder"
            )
    if not _fits(config.video_frames, frames_kernel):
        problems.append(
            f"video_frames ({config.video_frames}) must be a multiple of kernel_size[0] "
            f"({frames_kernel}): the vision stem takes frames {frames_kernel} at a time"
        )
    if not _fits(config.imu_samples, config.imu_kernel_size):
        problems.append(
            f"imu_samples ({config.imu_samples}) must be a multiple of imu_kernel_size "
            f"({config.imu_kernel_size}): the IMU stem cuts the recording into windows of "
            "that many samples and would drop the remainder"
        )
    for name in ("audio_num_mel_bins", "audio_target_len"):
        value = getattr(config, name)
        if value < config.audio_kernel_size:
            problems.append(
                f"{name} ({value}) must be at least audio_kernel_size "
                f"({config.audio_kernel_size}): the audio stem's patches must fit in the fbank"
            )
    return problems


def _fits(size: int, kernel: int) -> bool:
    """``size`` holds a whole, non-zero number of ``kernel``-sized steps."""
    return isinstance(kernel, int) and 0 < kernel <= size and size % kernel == 0


# The default of every loader's size parameters: the config's defaults are imagebind_huge's.
IMAGEBIND_HUGE = PreprocessConfig.from_model(ImageBindConfig())
