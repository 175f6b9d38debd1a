#!/usr/bin/env bash
# The Python packages the GPU machine lacks, packed to travel with the repository as
# .whl/site.tar.xz, which benchmarks/gpu_check.sh unpacks there. Run from anywhere:
#
#     benchmarks/gpu_wheels.sh        (or: make gpu-wheels)
#
# The GPU machine has Python 3.12 with torch, torchvision, torchaudio, numpy, pillow,
# aiohttp and prometheus-client, and reaches no package registry. Of our core
# dependencies it lacks PyAV (av), open_clip_torch (the text tokenizer) with ftfy and
# its wcwidth, and pybase64. A run carries at most 64 MiB: the repository's files and
# these packages. PyAV's wheel alone is 36 MB, so the wheels are installed here into
# a folder for that machine's Python (pip's --target with its platform) and the
# folder is packed with xz: about 27 MB instead of 38 MB of wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
NAMES=(av open_clip_torch ftfy wcwidth pybase64)
CACHE=${IB_WHEEL_CACHE:-$HOME/.cache/ib-vectorizer/gpu-wheels}
LIMIT=$((64 * 1024 * 1024))
TARGET=(
  --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64
)

# The versions the tests run with here, so the GPU machine runs what was tested.
read -r -a PINS <<<"$("$PYTHON" - "${NAMES[@]}" <<'EOF'
import sys
from importlib.metadata import version

print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)"

mkdir -p "$CACHE"
echo "downloading ${PINS[*]} (cp312, manylinux x86_64) into $CACHE"
"$PYTHON" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$CACHE" "${PINS[@]}"

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$PYTHON" -m pip install --quiet --no-deps --no-index --no-compile --find-links "$CACHE" \
  "${TARGET[@]}" --target "$build/site" "${PINS[@]}"

rm -rf .whl
mkdir -p .whl
echo "packing $(du -sh "$build/site" | cut -f1) with xz (a minute or two) ..."
"$PYTHON" - "$build/site" .whl/site.tar.xz <<'EOF'
import lzma
import sys
import tarfile

source, archive = sys.argv[1:]
with tarfile.open(archive, "w:xz", preset=9 | lzma.PRESET_EXTREME) as out:
    out.add(source, arcname=".")
EOF

"$PYTHON" - "$CACHE" .whl "$LIMIT" "${PINS[@]}" <<'EOF'
import subprocess
import sys
from pathlib import Path

cache, folder, limit, *pins = sys.argv[1:]
lines, total = [], 0
for pin in pins:
    name, version = pin.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    wheel = next(p for p in Path(cache).glob("*.whl") if p.name.lower().startswith(stem.lower()))
    total += wheel.stat().st_size
    lines.append(f"{wheel.name}  {wheel.stat().st_size / 1e6:.1f} MB")
packed = Path(folder, "site.tar.xz").stat().st_size
lines.append(f"wheels together: {total / 1e6:.1f} MB; packed as site.tar.xz: {packed / 1e6:.1f} MB")
Path(folder, "MANIFEST.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# What a run sends: tracked files and untracked ones git does not ignore, plus .whl.
listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True, check=True,
).stdout.split(b"\0")
tree = sum(Path(p.decode()).stat().st_size for p in listed if p and Path(p.decode()).is_file())
carried = sum(p.stat().st_size for p in Path(folder).iterdir())
sent = tree + carried
print(f"a run sends {sent / 2**20:.1f} MiB of {int(limit) / 2**20:.0f} MiB: "
      f"the repository {tree / 2**20:.1f} MiB, .whl {carried / 2**20:.1f} MiB")
if sent > int(limit):
    sys.exit("too much to send: the repository and .whl must stay under 64 MiB together")
EOF
