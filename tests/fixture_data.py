"""Where the parity fixture lives and what its reference outputs are scaled by."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "imagebind-tiny"
INPUTS = FIXTURE / "inputs"
HUGE_SHAPES = Path(__file__).parent / "fixtures" / "imagebind_huge_state_dict_shapes.json"

# The reference's fixed output scales; text's comes from the checkpoint (42 in the fixture).
SCALES = {
    "vision": 1.0,
    "video": 1.0,
    "text": 42.0,
    "audio": 20.0,
    "depth": 5.0,
    "thermal": 10.0,
    "imu": 5.0,
}


def fixture_files(manifest: dict, modality: str) -> list[Path]:
    return [INPUTS / name for name in manifest[modality]]


def embed_with_cli(modality: str, inputs: list[str], out: Path) -> np.ndarray:
    """``inputs`` embedded by `ib-vectorizer embed` with the fixture model, in a child process."""
    command = [sys.executable, "-m", "ib_vectorizer", "embed", "--modality", modality]
    command += ["--model", str(FIXTURE / "config.json")]
    command += ["--checkpoint", str(FIXTURE / "state_dict.pt"), "--output", str(out), *inputs]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return np.load(out)
