#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md ("GPU"), in one call on a lent CUDA machine
# that has PyTorch but not Avalanche:
#
#     bash benchmarks/device_check.sh OUT_DIR
#
# It installs the wheels carried in .whl/ (Avalanche and what it needs that
# the machine lacks; .whl/stub holds a stand-in for wandb, which Avalanche
# imports and the benchmarks never use), runs the flat-mask tests (the CUDA
# one included), then benchmarks/speed.py: the training step, evaluation,
# peak memory and task switch on the device's networks; one-epoch train()
# through Avalanche's loop; the stacked task-inference pass at 10 and 100
# tasks. Every part has its own time limit, so one slow part still leaves
# the others' figures.
set -uo pipefail
out=${1:-/tmp/device_check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD:$PWD/.whl/stub" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
python3 -c "import piggyback_avalanche, avalanche; print('piggyback_avalanche and avalanche', avalanche.__version__, 'import')" 2>&1 | tail -3
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_flat_masks.py 2>&1 | tail -3 | tee "$out/tests.txt"
timeout 140 python3 benchmarks/speed.py --device cuda --repeats 10 2>&1 | grep -v -i warn | tee "$out/speed.txt"
timeout 100 python3 benchmarks/speed.py --device cuda --avalanche-loop --network resnet50:224:64 resnet18:224:32 \
    --experience-size 512 --repeats 4 2>&1 | grep -v -i warn | tee "$out/loop.txt"
timeout 60 python3 benchmarks/speed.py --device cuda --task-inference 10 100 --network resnet18:224:8:bf16 \
    --repeats 5 2>&1 | grep -v -i warn | tee "$out/task_inference.txt"
