"""Options declared once (flags, environment, defaults, the documented table) and modality names."""

from __future__ import annotations

import argparse

import pytest

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import (
    ModelOptions,
    add_flags,
    as_env,
    as_flags,
    default_dtype,
    from_sources,
    options_of,
    options_table,
)
from ib_vectorizer.serving.settings import ServerSettings

from .fixture_data import FIXTURE


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, ModelOptions)
    return parser.parse_args(argv)


def test_flags_beat_environment_beat_defaults():
    env = {"IB_MODEL": "from-env.json", "IB_CHECKPOINT": "env.pth"}
    options = from_sources(ModelOptions, parse("--model", "flag.json"), env)
    assert options.model == "flag.json" and options.checkpoint == "env.pth"
    assert from_sources(ModelOptions, parse(), {}) == ModelOptions()
    assert ModelOptions().model == "imagebind_huge"


def test_a_boolean_flag_alone_means_true_and_takes_a_value_too():
    assert from_sources(ModelOptions, parse("--random-weights"), {}).random_weights is True
    assert from_sources(ModelOptions, parse("--random-weights", "0"), {}).random_weights is False
    assert from_sources(ModelOptions, parse(), {"IB_RANDOM_WEIGHTS": "yes"}).random_weights
    with pytest.raises(ValueError, match="IB_RANDOM_WEIGHTS: expected a boolean"):
        from_sources(ModelOptions, parse("--random-weights", "maybe"), {})


def test_choices_and_types_are_checked_with_the_variable_named():
    with pytest.raises(SystemExit):  # argparse refuses a dtype outside the choices
        parse("--dtype", "float8")
    with pytest.raises(ValueError, match="IB_DTYPE must be one of"):
        from_sources(ModelOptions, None, {"IB_DTYPE": "float8"})
    with pytest.raises(ValueError, match="IB_MAX_BATCH: expected int"):
        from_sources(ServerSettings, None, {"IB_MAX_BATCH": "many"})


def test_as_env_gives_a_child_the_same_options():
    options = ModelOptions(model="m.json", random_weights=True, dtype="bfloat16")
    env = as_env(options)
    assert env == {
        "IB_MODEL": "m.json",
        "IB_RANDOM_WEIGHTS": "1",
        "IB_DTYPE": "bfloat16",
        "IB_QUANTIZE": "none",
        "IB_IMAGE_DECODE": "exact",
        "IB_DECODE_PROCESSES": "0",
        "IB_MAX_ITEM_MB": "1024",
    }
    assert from_sources(ModelOptions, None, env) == options


def test_as_flags_give_another_command_the_same_options():
    options = ModelOptions(model="m.json", checkpoint="w.pt", device="cpu")
    assert as_flags(options)[:2] == ["--model", "m.json"]
    assert from_sources(ModelOptions, parse(*as_flags(options)), {}) == options


def test_server_settings_share_the_model_options():
    names = [o.name for o in options_of(ServerSettings)]
    model_names = [o.name for o in options_of(ModelOptions)]
    assert names[: len(model_names)] == model_names
    assert len(names) == len(set(names))
    settings = ServerSettings(model="m.json", port=9000)
    assert isinstance(settings, ModelOptions) and settings.model == "m.json"
    assert "| `IB_DTYPE` | `--dtype` | — |" in options_table(ServerSettings)


def test_float16_on_cuda_float32_on_cpu():
    assert default_dtype("cuda:1") == "float16" and default_dtype("cpu") == "float32"
    import torch

    assert ModelOptions().torch_dtype(torch.device("cpu")) is torch.float32
    assert ModelOptions(dtype="bfloat16").torch_dtype(torch.device("cpu")) is torch.bfloat16


def test_cuda_requested_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        assert ModelOptions(device="cuda").resolved_device().type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            ModelOptions(device="cuda").resolved_device()
        assert ModelOptions().resolved_device().type == "cpu"


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("image", Modality.VISION),
        ("Images", Modality.VISION),
        ("vision", Modality.VISION),
        ("texts", Modality.TEXT),
        ("IMU", Modality.IMU),
        (" audio ", Modality.AUDIO),
    ],
)
def test_modality_names_users_write(name, modality):
    assert Modality.parse(name) is modality


def test_modality_labels():
    assert [m.label for m in Modality] == [
        "image",
        "text",
        "audio",
        "video",
        "depth",
        "thermal",
        "imu",
    ]
    with pytest.raises(ValueError, match="unknown modality 'pictures': expected one of image"):
        Modality.parse("pictures")


def test_image_decode_from_flag_and_environment():
    assert from_sources(ModelOptions, parse("--image-decode", "fast"), {}).image_decode == "fast"
    assert from_sources(ModelOptions, parse(), {"IB_IMAGE_DECODE": "fast"}).image_decode == "fast"
    assert ModelOptions().image_decode == "exact"
    with pytest.raises(ValueError, match="IB_IMAGE_DECODE must be one of exact, fast"):
        from_sources(ModelOptions, None, {"IB_IMAGE_DECODE": "quick"})
    with pytest.raises(SystemExit):
        parse("--image-decode", "quick")


def test_quantize_from_flag_and_environment():
    assert from_sources(ModelOptions, parse("--quantize", "int8"), {}).quantize == "int8"
    assert from_sources(ModelOptions, parse(), {"IB_QUANTIZE": "int8"}).quantize == "int8"
    assert ModelOptions().quantize == "none"
    with pytest.raises(ValueError, match="IB_QUANTIZE must be one of none, int8, not 'int4'"):
        from_sources(ModelOptions, None, {"IB_QUANTIZE": "int4"})
    with pytest.raises(SystemExit):
        parse("--quantize", "int4")
    with pytest.raises(ValueError, match="int8 computes in float32, not IB_DTYPE=float16"):
        ModelOptions(quantize="int8", dtype="float16")


def test_int8_is_refused_off_the_cpu_before_any_weights_load():
    options = ModelOptions(model=str(FIXTURE / "config.json"), random_weights=True, quantize="int8")
    with pytest.raises(ValueError, match="IB_QUANTIZE=int8 runs on the CPU, not meta"):
        options.create(device="meta")
