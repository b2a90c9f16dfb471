# Shared by scripts/test.sh and scripts/serve.sh (sourced, not run). The caller defines
# say, NO_INSTALL (1: never install, fail instead) and LOG_DIR (where apt's output goes).
# shellcheck shell=bash

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    say "need root for: $*" >&2
    return 1
  fi
}

APT_UPDATED=0
apt_install() { # apt_install PACKAGE...: installs those not installed yet
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $NO_INSTALL == 1 ]]; then
    say "missing Debian packages: ${missing[*]} (MERIDIAN_TEST_NO_INSTALL=1)" >&2
    return 1
  fi
  say "installing Debian packages: ${missing[*]}"
  if ((APT_UPDATED == 0)); then
    as_root apt-get update -qq </dev/null >"$LOG_DIR/apt-update.log" 2>&1 ||
      { cat "$LOG_DIR/apt-update.log" >&2; return 1; }
    APT_UPDATED=1
  fi
  as_root apt-get install -y -qq "${missing[@]}" </dev/null >"$LOG_DIR/apt-install.log" 2>&1 ||
    { tail -n 50 "$LOG_DIR/apt-install.log" >&2; return 1; }
}
