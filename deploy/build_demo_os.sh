#!/usr/bin/env bash
# Build (once, cached) the demo OS: a tiny direct-kernel-boot guest that `make run` offers as
# the `tiny` OS template and the tests boot on libvirt/QEMU:
#   OUTDIR/vmlinuz     Debian 12 cloud kernel
#   OUTDIR/initrd.img  gzip'ed newc cpio: busybox + virtio/net/isofs/acpi modules + /init
#   OUTDIR/stamp       recipe hash, kernel and busybox versions
# Boot it with <cmdline>console=ttyS0 panic=1</cmdline>. The guest prints
# "TINY-GUEST booted" then "TINY-GUEST uptime <s>" every second on ttyS0,
# powers off on an ACPI power-button press (virsh shutdown; the domain needs
# <features><acpi/></features>) after printing "TINY-GUEST poweroff", and runs a
# root shell on tty1 (VGA console).
# Static networking from the kernel command line (before "TINY-GUEST booted"):
#   panel.ip=<dev>,<address>/<prefix>,<gateway or empty>   (repeatable, IPv4 or IPv6)
#   panel.dns=<ip>[,<ip>...]                                (repeatable)
# prints "TINY-GUEST net <dev> <address>/<prefix>" per address, "TINY-GUEST net bad
# <value>" per rejected value, then "TINY-GUEST net ready" (or "TINY-GUEST net none"
# when the command line has neither).
# Installer (after the network, before "TINY-GUEST booted"; /etc/tiny-guest/install):
#   panel.config=<http(s) URL>   (at most one) fetched with `wget -q -O /tmp/panel-config`,
#     retried for up to 60 s; prints "TINY-GUEST config fetched" (or "TINY-GUEST config
#     failed" and boots on), runs it with `sh` (output to ttyS0) and prints "TINY-GUEST
#     config exit <code>". The URL is never globbed or split (set -f, quoted).
#   without panel.config=: if /dev/vda (waited for up to 2 s) holds a tar archive (written
#     raw by the config script) with a member etc/tiny-guest/installed, it is extracted
#     into / and the guest prints "TINY-GUEST installed <hostname>" (from /etc/hostname,
#     also set with `hostname`); otherwise "TINY-GUEST not installed".
# The panel's config for this guest is templates_os/catalog/tiny/user-data.
# See tests/infra/README.md ("The tiny guest").
# Usage: deploy/build_demo_os.sh [OUTDIR]   (default <repo>/.cache/tiny-guest)
set -euo pipefail

die() { echo "build_demo_os: ERROR: $*" >&2; exit 1; }

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
OUTDIR=${1:-$REPO/.cache/tiny-guest}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# The recipe is this script: any change to it invalidates the cache.
RECIPE=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)

cached() {
  [ -s "$OUTDIR/vmlinuz" ] && [ -s "$OUTDIR/initrd.img" ] && [ -f "$OUTDIR/stamp" ] \
    && [ "$(head -n1 "$OUTDIR/stamp")" = "recipe=$RECIPE" ]
}
cached && exit 0

for tool in apt-get apt-cache dpkg-deb cpio gzip flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (run deploy/local_node.sh install)"
done

# Serialize concurrent builds into the same OUTDIR.
exec 9>"$OUTDIR/.lock"
flock -w 300 9 || die "timed out waiting for another build holding $OUTDIR/.lock"
cached && exit 0

WORK=$(mktemp -d /tmp/tiny-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"   # apt-get download may drop privileges to _apt
LOG=$WORK/build.log

kernel_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}'
}
KPKG=$(kernel_pkg || true)
if [ -z "$KPKG" ]; then
  apt-get update -q >"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "apt-get update failed"; }
  KPKG=$(kernel_pkg || true)
  [ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt sources?)"
fi
KVER=${KPKG#linux-image-}

cd "$WORK"
if ! apt-get download "$KPKG" busybox-static >"$LOG" 2>&1; then
  # Stale lists (404) -> refresh once.
  apt-get update -q >>"$LOG" 2>&1 || true
  apt-get download "$KPKG" busybox-static >>"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; die "apt-get download $KPKG busybox-static failed"; }
fi
KDEB=$(ls "$WORK"/linux-image-*.deb)
BDEB=$(ls "$WORK"/busybox-static_*.deb)
KPKG_VERSION=$(dpkg-deb -f "$KDEB" Version)
BB_VERSION=$(dpkg-deb -f "$BDEB" Version)

mkdir -p k bb
dpkg-deb -x "$KDEB" k
dpkg-deb -x "$BDEB" bb
[ -s "k/boot/vmlinuz-$KVER" ] || die "kernel image boot/vmlinuz-$KVER not found in $KDEB"
[ -x bb/bin/busybox ] || die "bin/busybox not found in $BDEB"
MODSRC=k/lib/modules/$KVER/kernel
[ -d "$MODSRC" ] || die "module tree lib/modules/$KVER/kernel not found in $KDEB"

# ------------------------------------------------------------------ rootfs
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/acpi/PWRF,etc/tiny-guest}
mkdir -p "$R/lib/modules/$KVER"
cp bb/bin/busybox "$R/bin/busybox"
chmod 755 "$R/bin/busybox"
ln -s busybox "$R/bin/sh"

# Modules wanted (roots); their dependencies are resolved from each module's
# .modinfo "depends=" and loaded first. Missing ones are skipped silently.
WANTED=(
  virtio_pci virtio_blk virtio_net virtio_scsi virtio_console
  isofs sr_mod ata_piix ahci
  button evdev
)

declare -A SEEN=()
ORDER=()
MODDIR=$R/lib/modules/$KVER

# Copy module $1 (decompressed) into the initramfs; print its path.
fetch_module() {
  local name=$1 src alt
  src=$(find "$MODSRC" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" -o -name "$name.ko.gz" \) -print -quit)
  if [ -z "$src" ]; then
    alt=${name//_/-}   # module names may use '-' in the file name
    src=$(find "$MODSRC" \( -name "$alt.ko" -o -name "$alt.ko.xz" -o -name "$alt.ko.zst" -o -name "$alt.ko.gz" \) -print -quit)
  fi
  [ -n "$src" ] || return 1
  local dst=$MODDIR/$name.ko
  case "$src" in
    *.ko.xz)  xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz)  gzip -dc "$src" >"$dst" ;;
    *)        cp "$src" "$dst" ;;
  esac || { echo "cannot copy/decompress $src (xz-utils/zstd installed?)" >&2; return 2; }
  echo "$dst"
}

add_module() {
  local name=${1//-/_} path deps d
  [ -n "${SEEN[$name]:-}" ] && return 0
  SEEN[$name]=1
  local rc=0
  path=$(fetch_module "$name") || rc=$?
  [ "$rc" -eq 1 ] && return 0                   # not in this kernel (maybe built in)
  [ "$rc" -eq 0 ] || die "failed to add module $name"
  deps=$(tr '\0' '\n' <"$path" | sed -n 's/^depends=//p' | head -n1)
  for d in ${deps//,/ }; do add_module "$d"; done
  ORDER+=("$name")
}
for m in "${WANTED[@]}"; do add_module "$m"; done
printf '%s\n' "${ORDER[@]}" >"$R/etc/tiny-guest/modules"

# /init: PID 1 until it execs busybox init (which reaps, respawns, never exits).
cat >"$R/init" <<'INIT'
#!/bin/sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
kver=$(uname -r)
for m in $(cat /etc/tiny-guest/modules); do
  insmod "/lib/modules/$kver/$m.ko" >/dev/null 2>&1
done
hostname tiny-guest
# Static network from panel.ip= / panel.dns= on the kernel command line.
/etc/tiny-guest/net
# ACPI power button: button.ko exposes it as KEY_POWER on an evdev node; busybox
# acpid maps that to /etc/acpi/PWRF/00000080. Start it before announcing the
# boot (and before installing: an install can be powered off too), and wait
# (bounded) until it holds the event devices open, so a `virsh shutdown` sent
# after "TINY-GUEST booted" is never lost.
acpid -f -c /etc/acpi -l /tmp/acpid.log &
acpid_pid=$!
i=0
while [ $i -lt 40 ] && ! ls -l /proc/$acpid_pid/fd 2>/dev/null | grep -q /dev/input/event; do
  sleep 0.05; i=$((i + 1))
done
# Installer: run the panel's config (panel.config=) or restore an installed system.
/etc/tiny-guest/install
echo "TINY-GUEST booted" >/dev/ttyS0
exec /sbin/init
# Only reached if exec failed: keep PID 1 alive.
while :; do sleep 3600; done
INIT

cat >"$R/etc/inittab" <<'TAB'
::respawn:/etc/tiny-guest/uptime
tty1::respawn:-/bin/sh
::ctrlaltdel:/etc/tiny-guest/poweroff
TAB

cat >"$R/etc/tiny-guest/uptime" <<'UP'
#!/bin/sh
while :; do
  read -r up _ </proc/uptime
  echo "TINY-GUEST uptime $up" >/dev/ttyS0
  sleep 1
done
UP

# Network recipe version 1 (panel.ip / panel.dns contract, README "Networking").
cat >"$R/etc/tiny-guest/net" <<'NET'
#!/bin/sh
# panel.ip=<dev>,<addr>/<prefix>,<gw or empty>  panel.dns=<ip>[,<ip>]  (kernel cmdline)
say() { echo "TINY-GUEST net $*" >/dev/ttyS0; }
ip link set lo up 2>/dev/null
set -f                                   # the values are never globbed
ips=""; dnss=""; seen=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    panel.ip|panel.dns|panel.ip=|panel.dns=) say "bad $arg"; seen=1 ;;
    panel.ip=*)  ips="$ips ${arg#panel.ip=}"; seen=1 ;;
    panel.dns=*) dnss="$dnss ${arg#panel.dns=}"; seen=1 ;;
  esac
done
[ "$seen" = 1 ] || { say none; exit 0; }

is_v4() {   # a.b.c.d, each 0..255
  echo "$1" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}$' || return 1
  local IFS=.; set -- $1
  [ "$1" -le 255 ] && [ "$2" -le 255 ] && [ "$3" -le 255 ] && [ "$4" -le 255 ]
}
is_v6() {   # hex groups and colons (at least two colons); the kernel checks the rest
  echo "$1" | grep -Eq '^[0-9A-Fa-f:]{2,39}$' && echo "$1" | grep -q ':.*:'
}
family() { if is_v4 "$1"; then echo 4; elif is_v6 "$1"; then echo 6; else echo 0; fi; }
dev_ok() {
  case "$1" in ""|lo|*[!A-Za-z0-9_.-]*) return 1 ;; esac
  [ "${#1}" -le 15 ] || return 1
  local i=0   # virtio_net was just loaded: give the device up to 2 s to appear
  while [ ! -e "/sys/class/net/$1" ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i + 1)); done
  [ -e "/sys/class/net/$1" ]
}
link_up() {
  if [ -d "/proc/sys/net/ipv6/conf/$1" ]; then   # static: no SLAAC, no DAD delay
    echo 0 >"/proc/sys/net/ipv6/conf/$1/accept_ra"
    echo 0 >"/proc/sys/net/ipv6/conf/$1/autoconf"
    echo 0 >"/proc/sys/net/ipv6/conf/$1/accept_dad"
  fi
  ip link set "$1" up
}

gw4=""; gw4dev=""; gw6=""; gw6dev=""
for v in $ips; do
  case "$v" in *,*,*,*) say "bad $v"; continue ;; *,*,*) ;; *) say "bad $v"; continue ;; esac
  dev=${v%%,*}; rest=${v#*,}; cidr=${rest%%,*}; gw=${rest#*,}
  addr=${cidr%/*}; plen=${cidr#*/}
  case "$cidr" in */*) ;; *) say "bad $v"; continue ;; esac
  case "$plen" in ""|*[!0-9]*) say "bad $v"; continue ;; esac
  fam=$(family "$addr")
  case "$fam" in
    4) [ "$plen" -le 32 ] || { say "bad $v"; continue; } ;;
    6) [ "$plen" -le 128 ] || { say "bad $v"; continue; } ;;
    *) say "bad $v"; continue ;;
  esac
  if [ -n "$gw" ] && [ "$(family "$gw")" != "$fam" ]; then say "bad $v"; continue; fi
  dev_ok "$dev" || { say "bad $v"; continue; }
  link_up "$dev" 2>/dev/null
  if ! ip -"$fam" addr add "$addr/$plen" dev "$dev" 2>/dev/null; then say "bad $v"; continue; fi
  say "$dev $addr/$plen"
  if [ -n "$gw" ]; then
    if [ "$fam" = 4 ] && [ -z "$gw4" ]; then gw4=$gw; gw4dev=$dev; fi
    if [ "$fam" = 6 ] && [ -z "$gw6" ]; then gw6=$gw; gw6dev=$dev; fi
  fi
done
# default routes: the first gateway given per family
if [ -n "$gw4" ]; then
  ip -4 route add default via "$gw4" dev "$gw4dev" 2>/dev/null \
    || ip -4 route add default via "$gw4" dev "$gw4dev" onlink 2>/dev/null \
    || say "bad gateway $gw4"
fi
if [ -n "$gw6" ]; then
  ip -6 route add default via "$gw6" dev "$gw6dev" 2>/dev/null \
    || ip -6 route add default via "$gw6" dev "$gw6dev" onlink 2>/dev/null \
    || say "bad gateway $gw6"
fi
: >/etc/resolv.conf
for d in $dnss; do
  ok=1
  case "$d" in ""|,*|*,|*,,*) ok=0 ;; esac
  for ns in $(echo "$d" | tr ',' ' '); do
    [ "$(family "$ns")" = 0 ] && ok=0
  done
  [ "$ok" = 1 ] || { say "bad $d"; continue; }
  for ns in $(echo "$d" | tr ',' ' '); do echo "nameserver $ns" >>/etc/resolv.conf; done
done
say ready
NET

# Installer recipe version 1 (panel.config contract, README "Installer").
cat >"$R/etc/tiny-guest/install" <<'INST'
#!/bin/sh
# panel.config=<URL>: fetch it, run it with sh.  Else: restore the system saved on /dev/vda.
say() { echo "TINY-GUEST $*" >/dev/ttyS0; }
set -f                                   # the URL is never globbed
url=""; n=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    panel.config=*) url=${arg#panel.config=}; n=$((n + 1)) ;;
    panel.config)   n=$((n + 1)) ;;
  esac
done
now() { read -r up _ </proc/uptime; echo "${up%%.*}"; }

if [ "$n" -gt 0 ]; then
  ok=0
  case "$url" in http://?*|https://?*) [ "$n" -eq 1 ] && ok=1 ;; esac
  if [ "$ok" = 1 ]; then
    # The NIC / host bridge may need a moment: retry for up to 60 s, each try bounded
    # (busybox wget has no working -T here, so `timeout` bounds a hanging connect).
    end=$(($(now) + 60)); ok=0
    while :; do
      rm -f /tmp/panel-config
      left=$((end - $(now)))
      [ "$left" -gt 15 ] && left=15
      [ "$left" -lt 1 ] && left=1
      if timeout "$left" wget -q -O /tmp/panel-config "$url" 2>/tmp/panel-config.err; then
        ok=1; break
      fi
      [ "$(now)" -ge "$end" ] && break
      sleep 1
    done
  else
    echo "panel.config: exactly one http(s) URL expected" >/tmp/panel-config.err
  fi
  if [ "$ok" = 1 ]; then
    say "config fetched"
    (cd / && HOME=/root sh /tmp/panel-config </dev/null >/dev/ttyS0 2>&1)
    say "config exit $?"
  else
    cat /tmp/panel-config.err >/dev/ttyS0 2>/dev/null
    say "config failed"
  fi
  exit 0
fi

# An "installed system": a tar archive written raw onto /dev/vda by the config script,
# with a member etc/tiny-guest/installed. A blank disk reads as an empty archive.
i=0   # virtio_blk was just loaded: give the disk up to 2 s to appear
while [ ! -b /dev/vda ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i + 1)); done
# Only its first 8 MiB are read: busybox tar would otherwise read the whole disk (~17 s for
# 1 GiB under TCG) past the end of the archive.
if [ -b /dev/vda ] && head -c 8388608 /dev/vda >/tmp/installed.tar 2>/dev/null \
    && tar -tf /tmp/installed.tar 2>/dev/null | grep -Eqx '(\./)?etc/tiny-guest/installed' \
    && tar -xf /tmp/installed.tar -C / 2>/dev/null; then
  rm -f /tmp/installed.tar
  h=""
  [ -f /etc/hostname ] && read -r h </etc/hostname
  [ -n "$h" ] && hostname -- "$h" 2>/dev/null
  say "installed $h"
else
  rm -f /tmp/installed.tar
  say "not installed"
fi
INST

cat >"$R/etc/tiny-guest/poweroff" <<'OFF'
#!/bin/sh
echo "TINY-GUEST poweroff" >/dev/ttyS0
sync
poweroff -f
OFF
ln -s ../../tiny-guest/poweroff "$R/etc/acpi/PWRF/00000080"

cat >"$R/etc/profile" <<'PROF'
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export PS1='tiny-guest# '
PROF
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"

chmod 755 "$R/init" "$R/etc/tiny-guest/uptime" "$R/etc/tiny-guest/poweroff" "$R/etc/tiny-guest/net" \
  "$R/etc/tiny-guest/install"

# ------------------------------------------------------------------ outputs
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
  | gzip -9n >"$WORK/initrd.img" || die "building the initramfs failed"
cp "k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
{
  echo "recipe=$RECIPE"
  echo "kernel=$KVER"
  echo "kernel_package_version=$KPKG_VERSION"
  echo "busybox_version=$BB_VERSION"
  echo "modules=${ORDER[*]}"
} >"$WORK/stamp"

chmod 644 "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/stamp"
chmod 755 "$OUTDIR"
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initrd.img" "$OUTDIR/initrd.img"
mv -f "$WORK/stamp" "$OUTDIR/stamp"   # last: marks the build complete
