#!/usr/bin/env bash
# Install the Debian 12 packages the panel and its tests need (only the missing
# ones). Idempotent and quiet when everything is already installed.
# Usage: tests/infra/install_deps.sh   (as root)
set -euo pipefail

die() { echo "install_deps: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found (Debian 12 expected)"

# What a node needs (QEMU, libvirt, bridge and image tools) the product installs itself.
"$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../deploy/local_node.sh" install >/dev/null \
  || die "deploy/local_node.sh install failed"

PACKAGES=(
  b3sum libvirt-dev pkg-config
  default-libmysqlclient-dev mariadb-server
  chromium
  gettext
  openssh-server openssh-client
  # the TLS-terminating reverse proxy of the console-over-HTTPS tests
  nginx-light
  # deploy/'s checkers (tests/test_deploy_files.py): systemd-analyze verify, logrotate -d
  systemd logrotate
  # to build mysqlclient / libvirt-python from source with pip
  gcc libc6-dev
  # tools used by the infra scripts themselves
  procps xz-utils zstd ca-certificates
  # the integration guide's examples (tests/e2e/test_integration_guide.py)
  curl jq
  # /metrics: promtool checks the rules and a scrape, a real Prometheus scrapes the panel
  # (tests/test_metrics_prometheus.py, tests/e2e/test_prometheus.py)
  prometheus
)

# The system python needs python3-venv (ensurepip) and headers for C extensions.
if [ -x /usr/bin/python3 ]; then
  if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    PACKAGES+=(python3-venv)
  fi
  PACKAGES+=(python3-dev)
else
  PACKAGES+=(python3 python3-venv python3-dev)
fi

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
  is_installed "$p" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
LOG=$(mktemp /tmp/install_deps.XXXXXX.log)

# Services cannot be started here (no systemd): stop maintainer scripts from
# trying. Only remove the policy file afterwards if we created it.
created_policy=0
cleanup() {
  if [ "$created_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi

needs_update() {
  # No package lists at all, or a missing package has no install candidate.
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || return 0
  local p cand
  for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then return 0; fi
  done
  return 1
}

run_update() {
  apt-get update -q >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; die "apt-get update failed (log: $LOG)"; }
}

run_install() {
  apt-get install "${APT_OPTS[@]}" "${missing[@]}" >>"$LOG" 2>&1
}

updated=0
if needs_update; then run_update; updated=1; fi

if ! run_install; then
  # Stale package lists (404s) are the usual cause: refresh once and retry.
  if [ "$updated" -eq 0 ]; then
    run_update
    run_install || { tail -n 30 "$LOG" >&2; die "apt-get install ${missing[*]} failed (log: $LOG)"; }
  else
    tail -n 30 "$LOG" >&2
    die "apt-get install ${missing[*]} failed (log: $LOG)"
  fi
fi

still=()
for p in "${missing[@]}"; do is_installed "$p" || still+=("$p"); done
[ "${#still[@]}" -eq 0 ] || die "packages still not installed: ${still[*]} (log: $LOG)"
rm -f "$LOG"
