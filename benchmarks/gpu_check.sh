#!/usr/bin/env bash
# The GPU path measured in one unattended command (docs/gpu.md):
#
#     benchmarks/gpu_check.sh OUT_DIR            on a machine with CUDA, under 8 minutes
#     benchmarks/gpu_check.sh OUT_DIR --dry-run  the tiny model on the CPU, about 2 minutes
#
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md, rewritten after each step.
# On the GPU machine the packages it lacks come from .whl/site.tar.xz
# (benchmarks/gpu_wheels.sh), unpacked into a temporary folder on PYTHONPATH; our
# code is imported from this checkout. PYTHON picks the interpreter (default python3).
set -euo pipefail

usage() {
  echo "usage: $0 OUT_DIR [--dry-run]" >&2
  exit 64
}

[[ $# -ge 1 && $1 != -* ]] || usage
out=$(realpath -m "$1")
shift
dry_run=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=(--dry-run) ;;
    *) usage ;;
  esac
done

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# A limit of our own, under the GPU machine's 10 minutes per command: the run stops
# its server and worker on SIGTERM and keeps what it measured.
limit_s=${IB_GPU_CHECK_LIMIT_S:-540}

site=""
cleanup() {
  if [[ -n $site ]]; then rm -rf "$site"; fi
}
trap cleanup EXIT

pythonpath=$PWD
if [[ ${#dry_run[@]} -eq 0 && -f .whl/site.tar.xz ]]; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/ib-gpu-site.XXXXXX")
  "$PYTHON" - .whl/site.tar.xz "$site" <<'EOF'
import sys
import tarfile

with tarfile.open(sys.argv[1]) as archive:
    archive.extractall(sys.argv[2], filter="data")
EOF
  pythonpath=$pythonpath:$site
  echo "gpu-check: carried packages unpacked into $site: $(ls "$site" | grep -v -e '^bin$' -e 'dist-info$' | tr '\n' ' ')"
fi
export PYTHONPATH=$pythonpath${PYTHONPATH:+:$PYTHONPATH}

# Every package the run imports, checked before any time is spent.
imports="aiohttp, av, ftfy, numpy, open_clip.tokenizer, PIL, prometheus_client, pybase64"
imports+=", torch, torchaudio.compliance.kaldi, torchvision"
if ! errors=$("$PYTHON" -c "import $imports" 2>&1); then
  echo "$errors" | tail -n 5 >&2
  echo "gpu-check: a package is missing: run benchmarks/gpu_wheels.sh here and carry .whl" >&2
  exit 3
fi

mkdir -p "$out"
status=0
timeout --signal=TERM --kill-after=30 "$limit_s" \
  "$PYTHON" -m benchmarks.gpu_check "$out" "${dry_run[@]}" || status=$?
exit "$status"
