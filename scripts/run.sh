#!/usr/bin/env bash
# The main job on the embedded default: train a small UDLM on the bundled corpus, sample from it, score it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$root/.venv/bin/sumi" demo "$@"
