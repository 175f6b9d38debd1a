"""Preprocessing constants of the reference ImageBind that no model config changes.

The sizes a model config does define (image size, context length, mel bins,
audio frames, IMU samples, frames per video clip) are in
:class:`~ib_vectorizer.preprocess.config.PreprocessConfig`, taken from the model.
"""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Audio
AUDIO_SAMPLE_RATE = 16_000
AUDIO_CLIP_SECONDS = 2.0
AUDIO_CLIPS = 3
AUDIO_FBANK_MEAN = -4.268
AUDIO_FBANK_STD = 9.138
AUDIO_FRAME_LENGTH_MS = 25.0
AUDIO_FRAME_SHIFT_MS = 10.0

# Video
VIDEO_CLIP_SECONDS = 2.0
VIDEO_CLIPS = 5
VIDEO_CROPS = 3
