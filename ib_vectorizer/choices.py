"""The fixed choices of two settings, kept apart from the code that applies them.

``options.py`` declares the flags and the model and preprocessing check the
values; both import from here, so neither imports the other.
"""

IMAGE_DECODE_MODES = ("exact", "fast")  # see preprocess/image.py
QUANTIZE_MODES = ("none", "int8")  # see model/quantize.py
