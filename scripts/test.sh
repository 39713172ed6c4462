#!/usr/bin/env bash
# The one test command, for a fresh Debian 12 machine (run as root, no stdin):
#   scripts/test.sh [pytest args...]
# Installs what the tests need only when it is missing, then runs pytest from
# the repository root. The exit code is pytest's. Install output goes to a log
# file; the terminal gets one summary line before pytest starts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SETUP_LOG="${TMPDIR:-/tmp}/lancang-test-setup.log"
: >"$SETUP_LOG"

# Servers and peers the tests start for real (tests/services.py and friends).
# python3-venv: Debian's python3 cannot create a venv without it.
APT_PACKAGES=(
  postgresql redis-server dcmtk orthanc orthanc-dicomweb coturn
  chromium chromium-driver fonts-noto-cjk poppler-utils zbar-tools dicom3tools
  python3-venv
)

die() {
  echo "test.sh: $1 (log: $SETUP_LOG)" >&2
  tail -n 30 "$SETUP_LOG" >&2 || true
  exit 2
}

missing_apt_packages() {
  local pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
      echo "$pkg"
    fi
  done
}

install_apt_packages() {
  local missing
  mapfile -t missing < <(missing_apt_packages)
  if ((${#missing[@]} == 0)); then
    APT_SUMMARY="apt: all present"
    return
  fi
  [[ $EUID -eq 0 ]] || die "missing Debian packages (${missing[*]}) and not root to install them"
  # Only touch the package lists when something is actually missing.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >>"$SETUP_LOG" 2>&1 </dev/null || die "apt-get update failed"
  apt-get install -y -q "${missing[@]}" >>"$SETUP_LOG" 2>&1 </dev/null ||
    die "apt-get install ${missing[*]} failed"
  APT_SUMMARY="apt: installed ${missing[*]}"
}

install_python_packages() {
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv >>"$SETUP_LOG" 2>&1 || die "python3 -m venv .venv failed"
  fi
  # pip on every run costs ~10 s; redo it only when pyproject.toml changed.
  local stamp=.venv/.lancang-test-install
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    PIP_SUMMARY="pip: up to date"
    return
  fi
  .venv/bin/python -m pip install --no-input -q -e '.[test]' >>"$SETUP_LOG" 2>&1 </dev/null ||
    die "pip install -e '.[test]' failed"
  echo "$want" >"$stamp"
  PIP_SUMMARY="pip: installed .[test]"
}

install_apt_packages
install_python_packages

# Debian keeps initdb and pg_ctl off PATH. The venv's bin is NOT put on PATH:
# pynetdicom installs its own echoscu/storescu/... there, which would shadow
# dcmtk's (tests/services.py finds `weed` next to the venv's python anyway).
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[[ -n $PG_BIN ]] || die "no /usr/lib/postgresql/*/bin after installing postgresql"
export PATH="$PG_BIN:$PATH"

echo "test.sh: $APT_SUMMARY; $PIP_SUMMARY; postgres from $PG_BIN; setup log $SETUP_LOG" >&2
exec .venv/bin/python -m pytest "$@" </dev/null
