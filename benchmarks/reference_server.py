"""Weaviate's own inference container, served with any weights, as a yardstick.

``python -m benchmarks.reference_server --app DIR --model M --checkpoint F``
runs the code of Weaviate's ``multi2vec-bind-inference`` container (a
checkout in ``DIR``: ``app.py``, ``bind.py``, ``bind_data.py``, ``meta.py`` and
Meta's ImageBind in ``DIR/ImageBind``) exactly as its image does — one
uvicorn worker, ``PYTHONPATH=DIR:DIR/ImageBind`` — with one change: the
container's ``imagebind_huge(pretrained=True)``, which would download
Meta's weights, builds Meta's model with our config ``M`` and loads ``F``.
Then ``ib-vectorizer bench --url OURS --baseline-url THIS`` measures our
server against the reference container with the same weights and load.

Neither project's code is part of this repository: bring the checkout (and
Meta's model code's requirements: fastapi, uvicorn, timm, pytorchvideo, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from ib_vectorizer.model.config import ImageBindConfig, get_config


def patch_weights(app_dir: Path, config: ImageBindConfig, checkpoint: Path) -> None:
    """Make the container's ``imagebind_huge`` build ``config`` with ``checkpoint``'s weights."""
    sys.path[:0] = [str(app_dir), str(app_dir / "ImageBind")]
    # The container pins torch 2.0; torchvision has since renamed this module,
    # which pytorchvideo 0.1.5 imports. Both servers run on one torch here.
    import torchvision.transforms._functional_tensor as functional_tensor

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    try:
        models = importlib.import_module("ImageBind.models.imagebind_model")
    except ImportError as err:
        raise SystemExit(
            f"--app {app_dir}: cannot import ImageBind.models.imagebind_model ({err}); "
            "DIR needs Meta's ImageBind in DIR/ImageBind and its requirements installed"
        ) from None

    accepted = inspect.signature(models.ImageBindModel).parameters
    arguments = {k: v for k, v in dataclasses.asdict(config).items() if k in accepted}

    def imagebind_with_our_weights(pretrained: bool = False) -> torch.nn.Module:
        model = models.ImageBindModel(**arguments)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model

    models.imagebind_huge = imagebind_with_our_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reference_server", description=__doc__
    )
    parser.add_argument("--app", type=Path, required=True, help="Weaviate's container checkout")
    parser.add_argument("--model", required=True, help="preset name or config.json")
    parser.add_argument("--checkpoint", type=Path, required=True, help="weights file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    if not (args.app / "app.py").is_file():
        raise SystemExit(f"--app {args.app}: no app.py in it (a multi2vec-bind-inference checkout)")

    config = get_config(args.model)
    app_dir = args.app.resolve()
    patch_weights(app_dir, config, args.checkpoint.resolve())
    # The container writes each audio/video/IMU item to a file in its working
    # directory and serves /meta from ./.checkpoints/info.json: give it a scratch one.
    work = Path(tempfile.mkdtemp(prefix="ib-reference-"))
    (work / ".checkpoints").mkdir()
    (work / ".checkpoints" / "info.json").write_text(json.dumps({"model": args.model}))
    os.chdir(work)

    import uvicorn

    app = importlib.import_module("app").app
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
