#!/usr/bin/env bash
# The panel's own host as a node: what `make run` does before the panel starts.
#   deploy/local_node.sh install   install what a node needs when it is missing (QEMU, libvirt,
#                                  the bridge, filter and image tools), one line saying what and
#                                  why, then quiet
#   deploy/local_node.sh start     start libvirt: with systemd when it is PID 1, else the
#                                  daemons directly; wait until qemu:///system answers
#   deploy/local_node.sh check     can this host run guests at all? (exit 3 and why, if not)
# Idempotent; as root on Debian/Ubuntu. Exit 3 means "this host cannot be a node": the caller
# goes on as a panel only. The test suite starts libvirt through `start` too.
set -euo pipefail

say() { echo "local node: $*"; }
die() { echo "local node: ERROR: $*" >&2; exit 1; }
cannot() { echo "local node: this host cannot run guests: $*; the panel runs without a local node" >&2; exit 3; }

# Packages of a node: the hypervisor, libvirt (its nwfilter rules need iptables/ebtables), the
# bridge tools, qemu-img, and what the demo OS is built with (deploy/build_demo_os.sh).
PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients iptables iproute2
          busybox-static cpio xz-utils zstd)
TIMEOUT=${LOCAL_NODE_TIMEOUT:-30}
# What runs as PID 1 decides how services start (the tests set it to try both ways).
INIT=${LOCAL_NODE_INIT:-$(cat /proc/1/comm 2>/dev/null || true)}

check() {
  [ "$(id -u)" -eq 0 ] || cannot "not running as root"
  case "$(uname -m)" in x86_64|amd64) ;; *) cannot "the demo OS and templates are x86-64, this is $(uname -m)" ;; esac
  command -v apt-get >/dev/null 2>&1 || cannot "no apt-get (Debian or Ubuntu expected)"
}

is_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]; }

install() {
  check
  local missing=() p
  for p in "${PACKAGES[@]}"; do is_installed "$p" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "installing ${missing[*]} (to run servers on this host)"
  LOG=$(mktemp /tmp/local-node-install.XXXXXX.log)
  # Without systemd no maintainer script may start a service: `start` does it.
  POLICY=0
  if [ "$INIT" != systemd ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && POLICY=1
  fi
  trap '{ [ "$POLICY" -eq 1 ] && rm -f /usr/sbin/policy-rc.d; } || true' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt_update() { apt-get update -q >>"$LOG" 2>&1; }
  apt_install() { apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                    "${missing[@]}" >>"$LOG" 2>&1; }
  # No package lists yet: update first; stale ones (404s): update once and try again.
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || apt_update || true
  if ! apt_install && ! { apt_update && apt_install; }; then
    tail -n 20 "$LOG" >&2
    cannot "apt-get install ${missing[*]} failed (log: $LOG)"
  fi
  rm -f "$LOG"
}

answers() { timeout 10 virsh -q -c qemu:///system version >/dev/null 2>&1; }

start() {
  check
  command -v virsh >/dev/null 2>&1 && [ -x /usr/sbin/libvirtd ] || cannot "libvirt is not installed (deploy/local_node.sh install)"
  # QEMU runs as libvirt-qemu; KVM, where it works, needs the device open to it.
  if [ -e /dev/kvm ]; then chmod 666 /dev/kvm 2>/dev/null || true; fi
  answers && return 0
  if [ "$INIT" = systemd ]; then
    systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 \
      || systemctl start libvirtd >/dev/null 2>&1 || die "systemctl could not start libvirtd"
  else
    # Each daemon refuses to start twice (it locks its pid file), so starting one that runs
    # already is harmless; a process table shared with another root (a chroot, a container)
    # says nothing about ours.
    virtlogd -d >/dev/null 2>&1 || true
    libvirtd -d >/dev/null 2>&1 || true
  fi
  local i
  for ((i = 0; i < TIMEOUT * 4; i++)); do answers && return 0; sleep 0.25; done
  die "libvirtd did not answer at qemu:///system within ${TIMEOUT}s; run 'libvirtd' in the foreground to see why"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  check) check ;;
  *) echo "usage: $0 install|start|check" >&2; exit 2 ;;
esac
