# Sourced by scripts/demo and scripts/test: make a virtual environment with
# π-tracker installed, and put it first on PATH.
#
# - A torch that the base Python already has is kept (the environment then sees
#   the base site-packages); otherwise torch==$PITRACK_TORCH_VERSION is installed
#   (default 2.13.0), from $PITRACK_TORCH_INDEX when that is set (for example the
#   PyTorch CPU wheel index, to avoid a multi-GB CUDA build).
# - Reinstalls only when pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PITRACK_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "π-tracker needs Python >= 3.10; $python is $("$python" --version 2>&1)" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c 'import torch' >/dev/null 2>&1; then
    echo "bootstrap: keeping the torch of $python" >&2
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
  version="${PITRACK_TORCH_VERSION:-2.13.0}"
  echo "bootstrap: installing torch==$version" >&2
  if [ -n "${PITRACK_TORCH_INDEX:-}" ]; then
    "${pip[@]}" install "torch==$version" --index-url "$PITRACK_TORCH_INDEX"
  else
    "${pip[@]}" install "torch==$version"
  fi
fi
stamp="$venv/.pitrack-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing π-tracker into $venv" >&2
  "${pip[@]}" install -e "$root[test,plots]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
