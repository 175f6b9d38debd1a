"""When int8 pays on the CPU: its cost at load against what it saves per item.

``--quantize int8`` rounds the trunks' weights to int8 when the model loads;
each item then runs faster than in float32. This measures, each in a fresh
process, with float32 measured in the same run as the baseline:

* load time: float32; int8 quantized at load (nothing kept, as where the
  checkpoint's directory is read-only); int8 on the first load (quantized, and
  kept beside the checkpoint as ``<checkpoint>.int8``); int8 from the kept file;
* seconds per item for each modality, float32 and int8 (one item per call,
  median of ``--repeats`` calls after one uncounted call);
* so the break-even: from how many items of a modality a run is faster in int8;
* with ``--photos N`` (default 4), ``ib-vectorizer embed`` itself on N photos:
  float32, int8 with nothing kept yet, int8 with the kept file.

``--cold`` evicts the checkpoint and the kept file from the page cache before
each load, as on a freshly started machine. With ``--rounds R`` everything is
measured R times and the fastest is shown: on a shared machine other work only
adds time.

    python -m benchmarks.int8 --checkpoint /tmp/imagebind_huge_random.pth

A checkpoint path that does not exist is first filled with random weights.
The kept file beside it is deleted at the start and left in place at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.server_start import evict_from_page_cache, machine, write_random_checkpoint

LOADS = ("float32", "int8 at load", "int8 first load", "int8 kept")
_CHILD_FLAG = "--measure-load"
# In this order: the first int8 run writes the kept file, the second reads it.
EMBED_RUNS = (("float32", "none"), ("int8, nothing kept yet", "int8"), ("int8, kept file", "int8"))


def kept_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".int8")


def example_inputs(model, modality: str):
    """One item of ``modality`` as the model takes it: random values, real token ids."""
    import torch

    from ib_vectorizer.embedder import Embedder

    batch = Embedder(model).example_batch(modality, 1)
    generator = torch.Generator().manual_seed(0)
    if batch.dtype == torch.int64:  # a caption: start, ten words, end, padding
        batch[0, :12] = torch.randint(1, 49406, (12,), generator=generator)
        batch[0, 0], batch[0, 11] = 49406, 49407
        return batch
    return torch.randn(batch.shape, generator=generator)


def measure_load(args: argparse.Namespace) -> dict:
    """In a fresh process: load as ``args.load`` says, then time each modality per item."""
    import torch

    from ib_vectorizer.embedder import Embedder
    from ib_vectorizer.model import create_model, quantize

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.load == "int8 at load":
        quantize.KEEP_FROM_BYTES = math.inf  # keep nothing: quantize on this load
    wall, cpu = time.perf_counter(), time.process_time()
    model = create_model(
        args.model,
        checkpoint=args.checkpoint,
        quantize="none" if args.load == "float32" else "int8",
    )
    result: dict = {"load_s": time.perf_counter() - wall, "load_cpu_s": time.process_time() - cpu}
    result["per_item_s"], result["per_item_cpu_s"] = {}, {}
    if args.load in ("float32", "int8 kept"):
        embedder = Embedder(model)
        for modality in args.modalities:
            inputs = example_inputs(model, modality)
            embedder.embed_tensors(modality, inputs)
            times, cpu_times = [], []
            for _ in range(args.repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                embedder.embed_tensors(modality, inputs)
                times.append(time.perf_counter() - wall)
                cpu_times.append(time.process_time() - cpu)
            result["per_item_s"][modality] = statistics.median(times)
            result["per_item_cpu_s"][modality] = statistics.median(cpu_times)
    return result


def fastest_result(results: list[dict]) -> dict:
    """Each figure's least value over the rounds: other load on the machine only adds time."""
    merged: dict = {}
    for key, value in results[0].items():
        if isinstance(value, dict):
            merged[key] = {k: min(r[key][k] for r in results) for k in value}
        else:
            merged[key] = min(r[key] for r in results)
    return merged


def run_child(args: argparse.Namespace, load: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.int8", _CHILD_FLAG, load]
    command += ["--checkpoint", str(args.checkpoint), "--model", args.model]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    command += ["--modalities", *args.modalities]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def time_embed_command(args: argparse.Namespace, photos: list[Path], quantize: str) -> float:
    """Wall seconds of ``ib-vectorizer embed`` on ``photos``, process start to exit."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "ib_vectorizer", "embed", "--modality", "image"]
        command += ["--model", args.model, "--checkpoint", str(args.checkpoint)]
        command += ["--quantize", quantize, "--output", str(Path(scratch) / "vectors.npy")]
        started = time.perf_counter()
        subprocess.run([*command, *map(str, photos)], check=True, capture_output=True)
        return time.perf_counter() - started


def write_photos(directory: Path, count: int) -> list[Path]:
    """``count`` 1600×1200 synthetic photos (JPEG, noisy gradients, decode like real ones)."""
    import numpy as np

    from ib_vectorizer.bench.payloads import image_payload

    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        path = directory / f"photo{number}.jpg"
        path.write_bytes(image_payload(rng, size=(1600, 1200)))
        paths.append(path)
    return paths


def break_even(extra_load_s: float, saved_per_item_s: float) -> str:
    """Items from which int8's extra load time is paid back."""
    if saved_per_item_s <= 0:
        return "never"
    if extra_load_s <= 0:
        return "1"
    return str(math.ceil(extra_load_s / saved_per_item_s))


def report(loads: dict[str, dict], commands: dict[str, float], photos: int) -> None:
    print(f"\nmachine: {machine()}")
    print("\n| load | wall s | CPU s | × float32 |")
    print("|---|---:|---:|---:|")
    base = loads["float32"]["load_s"]
    for name, result in loads.items():
        print(
            f"| {name} | {result['load_s']:.2f} | {result['load_cpu_s']:.2f} | "
            f"{result['load_s'] / base:.1f} |"
        )
    fp32, int8 = loads["float32"], loads["int8 kept"]
    at_load = loads["int8 at load"]["load_s"] - base
    kept = int8["load_s"] - base
    print(
        "\n| modality | float32 s/item (CPU s) | int8 s/item (CPU s) | int8 ÷ float32 "
        "| int8 faster from N items: quantized at load / kept |"
    )
    print("|---|---:|---:|---:|---:|")
    for modality, seconds in fp32["per_item_s"].items():
        faster = int8["per_item_s"][modality]
        saved = seconds - faster
        print(
            f"| {modality} | {seconds:.3f} ({fp32['per_item_cpu_s'][modality]:.2f}) | "
            f"{faster:.3f} ({int8['per_item_cpu_s'][modality]:.2f}) | {faster / seconds:.2f} | "
            f"{break_even(at_load, saved)} / {break_even(kept, saved)} |"
        )
    if commands:
        print(f"\n`ib-vectorizer embed` on {photos} photos (process start to exit):")
        for name, seconds in commands.items():
            ratio = seconds / commands["float32"]
            print(f"  {name}: {seconds:.1f} s ({ratio:.2f}x float32)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="created if missing")
    parser.add_argument("--model", default="imagebind_huge", help="preset or config.json")
    parser.add_argument("--modalities", nargs="*", default=["vision", "text", "audio"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per modality")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--photos", type=int, default=4, help="photos for the embed command")
    parser.add_argument(
        "--cold", action="store_true", help="evict the weights from the page cache before each load"
    )
    parser.add_argument("--rounds", type=int, default=1, help="loads of each kind; fastest shown")
    parser.add_argument(_CHILD_FLAG, dest="load", choices=LOADS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(measure_load(args)))
        return
    if not args.checkpoint.exists():
        write_random_checkpoint(args.model, args.checkpoint)
    rounds: dict[str, list[dict]] = {load: [] for load in LOADS}
    for round_number in range(1, args.rounds + 1):
        kept_path(args.checkpoint).unlink(missing_ok=True)
        for load in LOADS:  # in this order: the first int8 load writes the file the next reads
            if args.cold:
                for path in (args.checkpoint, kept_path(args.checkpoint)):
                    if path.exists():
                        evict_from_page_cache(path)
            rounds[load].append(run_child(args, load))
            seconds = rounds[load][-1]["load_s"]
            print(f"round {round_number}: {load}: loaded in {seconds:.2f} s", flush=True)
    loads = {load: fastest_result(results) for load, results in rounds.items()}
    if not kept_path(args.checkpoint).exists():
        print("(nothing kept: the checkpoint is small enough to quantize at every load)")
    commands: dict[str, float] = {}
    if args.photos:
        with tempfile.TemporaryDirectory() as scratch:
            photos = write_photos(Path(scratch), args.photos)
            runs: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                kept_path(args.checkpoint).unlink(missing_ok=True)
                for name, quantize in EMBED_RUNS:
                    runs.setdefault(name, []).append(time_embed_command(args, photos, quantize))
            commands = {name: min(times) for name, times in runs.items()}
    report(loads, commands, args.photos)


if __name__ == "__main__":
    main()
