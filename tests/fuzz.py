"""Seeded fuzzing of the inference server with mutants of the fixture's real media.

    python -m tests.fuzz --mutants 500 [--seed 0] [--save DIR]

starts ``ib-vectorizer serve`` with the tiny model, sends every mutant alone
(``--mutants`` per modality, from ``tests.hostile.mutants``) and the bombs of
``tests.hostile.bombs``, and prints what came back per modality. A mutant is
fine when the answer is 200 with finite unit vectors, or a 400 whose error
names the item; anything else (a 500, a NaN, no answer, a dead server) is a
finding, printed and, with ``--save``, written to DIR to become a regression
fixture (``tests/fixtures/hostile/``). The server's memory above idle is
reported too.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .hostile import SEEDS, bombs, mutants, text_mutants

RESPONSE_KEY = {
    "texts": "textVectors",
    "images": "imageVectors",
    "audio": "audioVectors",
    "video": "videoVectors",
    "depth": "depthVectors",
    "thermal": "thermalVectors",
    "imu": "imuVectors",
}
REGRESSIONS = Path(__file__).parent / "fixtures" / "hostile"


@dataclass
class Findings:
    """Answers counted per wire key, and every answer that is not fine."""

    outcomes: dict[str, Counter] = field(default_factory=dict)
    problems: list[tuple[str, str, bytes | str]] = field(default_factory=list)  # name, why, item

    def count(self, key: str, outcome: str) -> None:
        self.outcomes.setdefault(key, Counter())[outcome] += 1

    def table(self) -> str:
        rows = [
            "| items | sent | embedded (200) | refused (400) | other |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, counts in self.outcomes.items():
            other = sum(n for outcome, n in counts.items() if outcome not in ("200", "400"))
            rows.append(
                f"| {key} | {sum(counts.values())} | {counts['200']} | {counts['400']} | {other} |"
            )
        return "\n".join(rows)


def _strict_json(body: bytes) -> dict:
    def refuse(name: str):
        raise ValueError(f"{name} in the answer")

    return json.loads(body, parse_constant=refuse)


def send(url: str, key: str, item: bytes | str, timeout: float = 120) -> tuple[str, str]:
    """(outcome, problem or ""): outcome is the status, or ``no answer``."""
    wire = item if isinstance(item, str) else base64.b64encode(item).decode()
    request = urllib.request.Request(
        url + "/vectorize",
        data=json.dumps({key: [wire]}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    except OSError as err:
        return "no answer", f"no answer: {err}"
    try:
        answer = _strict_json(body)
    except ValueError as err:
        return str(status), f"answer is not JSON ({err})"
    if status == 200:
        vectors = np.array(answer[RESPONSE_KEY[key]], dtype=np.float64)
        if vectors.shape[0] != 1 or not np.isfinite(vectors).all():
            return "200", "a vector that is not finite"
        if abs(np.linalg.norm(vectors[0]) - 1) > 1e-3:
            return "200", "a vector that is not a unit vector"
        return "200", ""
    if status == 400 and answer.get("error", "").startswith(f"{key}[0]: "):
        return "400", ""
    return str(status), f"answered {status}: {answer.get('error', '')[:200]}"


def items(count: int, seed: int) -> Iterable[tuple[str, str, bytes | str]]:
    """(wire key, name, item): ``count`` mutants of every modality, the bombs, the regressions."""
    for key in SEEDS:
        for name, data in mutants(key, count, seed):
            yield key, name, data
    for name, text in text_mutants(count, seed):
        yield "texts", name, text
    for bomb in bombs():
        yield bomb.key, f"bomb: {bomb.name}", bomb.data
    for path in sorted(REGRESSIONS.glob("*/*")):
        key, data = path.parent.name, path.read_bytes()
        yield key, f"regression: {path.name}", data.decode() if key == "texts" else data


def fuzz(url: str, count: int, seed: int, clients: int = 4) -> Findings:
    """Send every item alone, ``clients`` at a time; count and collect what is not fine."""
    findings = Findings()
    work = list(items(count, seed))

    def one(entry):
        key, _, item = entry
        return entry, *send(url, key, item)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for (key, name, item), outcome, problem in pool.map(one, work):
            findings.count(key, outcome)
            if problem:
                findings.problems.append((name, problem, item))
    return findings


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, the most it has been) of process ``pid``, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(
        int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mutants", type=int, default=100, help="mutants per modality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--save", type=Path, help="write each finding's item here")
    args = parser.parse_args(argv)

    from .server_process import ServerProcess

    with ServerProcess(IB_MEMORY_BUDGET_MB="1280") as server:
        idle, _ = memory_mib(server.process.pid)
        started = time.perf_counter()
        findings = fuzz(server.url, args.mutants, args.seed, args.clients)
        elapsed = time.perf_counter() - started
        alive = server.exit_code() is None
        _, peak = memory_mib(server.process.pid)
    sent = sum(sum(c.values()) for c in findings.outcomes.values())
    print(findings.table())
    print(
        f"\n{sent} items in {elapsed:.0f} s; server alive: {alive}; "
        f"peak memory {peak - idle:.0f} MiB above idle ({idle:.0f} MiB)"
    )
    for name, problem, item in findings.problems:
        print(f"finding: {name}: {problem}")
        if args.save:
            key = name.split("/")[0]
            target = args.save / key / re.sub(r"[^\w.-]", "_", name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item if isinstance(item, bytes) else item.encode())
    return 1 if findings.problems or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
