"""The GPU path measured by one prepared, unattended run: ``benchmarks/gpu_check.sh OUT_DIR``.

A GPU machine is lent for minutes at a time with nothing reachable from it, so
everything it should tell us runs in one command of under 8 minutes: parity of
float16 and bfloat16 against float32 (and of the GPU against the CPU), the
model's throughput per modality and batch size with and without
``torch.compile``, and the inference server's throughput under many one-item
clients. ``--dry-run`` runs every step with the tiny fixture model on the CPU,
so the run is known to work before a GPU is spent on it. See docs/gpu.md.
"""
