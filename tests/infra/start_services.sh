#!/usr/bin/env bash
# Make sure the services the panel and its tests need are up (no systemd):
#   * MariaDB answering `mariadb -uroot -e 'select 1'`
#   * virtlogd + libvirtd running (not zombies), `virsh -c qemu:///system version` answering
# Idempotent, quiet on success, bounded waits (~30 s each), clear errors.
# Usage: tests/infra/start_services.sh [--libvirt-only]   (as root)
set -euo pipefail

die() { echo "start_services: ERROR: $*" >&2; exit 1; }
TIMEOUT=${START_SERVICES_TIMEOUT:-30}

[ "$(id -u)" -eq 0 ] || die "must run as root"

# True if PID is an existing process that is not a zombie/dead.
pid_alive() {
  local pid=$1 state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  case "$state" in Z|X|x) return 1 ;; esac
  return 0
}

# True if a live (non-zombie) process runs executable $1 (full path).
exe_running() {
  local exe=$1 d pid target
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    target=$(readlink "$d/exe" 2>/dev/null) || continue
    target=${target% (deleted)}
    [ "$target" = "$exe" ] || continue
    pid_alive "$pid" && return 0
  done
  return 1
}

# wait_for SECONDS CMD...  (true as soon as CMD succeeds)
wait_for() {
  local secs=$1; shift
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  return 1
}

# ---------------------------------------------------------------- MariaDB
mariadb_ok() { mariadb -uroot -e 'select 1' >/dev/null 2>&1; }

start_mariadb() {
  command -v mariadb >/dev/null 2>&1 || die "mariadb client not installed (run tests/infra/install_deps.sh)"
  local daemon=/usr/sbin/mariadbd
  [ -x "$daemon" ] || daemon=/usr/sbin/mysqld
  [ -x "$daemon" ] || die "mariadb server not installed (run tests/infra/install_deps.sh)"

  install -d -o mysql -g mysql -m 755 /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    local initlog=/tmp/start_services-mariadb-install-db.log
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$initlog" 2>&1 \
      || { tail -n 20 "$initlog" >&2; die "mariadb-install-db failed (log: $initlog)"; }
  fi
  if ! exe_running "$daemon"; then
    start-stop-daemon --start --oknodo --background --exec "$daemon" -- --user=mysql \
      || die "could not launch $daemon"
  fi
  wait_for "$TIMEOUT" mariadb_ok \
    || die "MariaDB did not answer 'select 1' as root within ${TIMEOUT}s (see /var/log/mysql/ or the datadir's .err file)"
}

LIBVIRT_ONLY=0
[ "${1:-}" = "--libvirt-only" ] && LIBVIRT_ONLY=1
[ "$LIBVIRT_ONLY" = 1 ] || mariadb_ok || start_mariadb

# ---------------------------------------------------------------- libvirt
# The product's own start (make run uses it too): systemd or the daemons directly.
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
LOCAL_NODE_TIMEOUT=$TIMEOUT "$REPO/deploy/local_node.sh" start \
  || die "libvirt did not start (deploy/local_node.sh start)"
