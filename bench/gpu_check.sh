#!/usr/bin/env bash
# The GPU check: the `gpu`-marked tests (bf16 sink attention vs fp32, fused loss, samplers, 1-GPU FSDP2 + compile
# step, save -> load) and the training MFU of the ~1B Sumi config at seq 1184 in bf16 (bench/gpu_mfu.py).
# Budget: <= 8 minutes on one GPU. Prints one JSON line. On a machine without CUDA it says so and exits 0.
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  "$PY" - <<'PYEOF'
import json, torch
print(json.dumps({"bench": "gpu_check", "gpu": False, "ran": False,
                  "reason": "no CUDA device visible (torch.cuda.is_available() is False); nothing was run. "
                            "The gpu-marked tests skip with this reason under pytest; run this script on a GPU "
                            "machine for the numbers.", "torch": torch.__version__}))
PYEOF
  exit 0
fi

start=$(date +%s)
report=$(mktemp)
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py --junitxml="$report" >"$report.log" 2>&1
tests_rc=$?
mfu_json=$(timeout 240 "$PY" bench/gpu_mfu.py --steps 10 --micro-batch 8 2>"$report.mfu.log" | tail -1)
mfu_rc=$?
"$PY" - "$report" "$tests_rc" "$mfu_rc" "$mfu_json" "$start" "$report.log" <<'PYEOF'
import json, sys, time, xml.etree.ElementTree as ET
report, tests_rc, mfu_rc, mfu_json, start, log = sys.argv[1:7]
out = {"bench": "gpu_check", "gpu": True, "ran": True, "tests_rc": int(tests_rc), "mfu_rc": int(mfu_rc)}
try:
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    out["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None
                     or c.find("error") is not None]
except Exception as exc:  # pytest died before writing its report
    out["tests"] = {"error": f"no junit report ({exc}); see {log}"}
try:
    out["mfu"] = json.loads(mfu_json)
except ValueError:
    out["mfu"] = {"error": f"bench/gpu_mfu.py printed no JSON (rc {mfu_rc})"}
out["wall_s"] = round(time.time() - float(start), 1)
print(json.dumps(out))
PYEOF
