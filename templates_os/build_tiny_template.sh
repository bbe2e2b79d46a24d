#!/usr/bin/env bash
# Lay out the tiny demo OS template on the template share:
#   SHARE_DIR/tiny/template.toml, user-data     from templates_os/catalog/tiny/
#   SHARE_DIR/tiny/vmlinuz, initrd.img          from tests/infra/build_tiny_guest.sh (cached)
#   SHARE_DIR/tiny/disk.qcow2                   blank 1 GiB qcow2 (created once): the image
#     install puts an overlay on it; the guest sees "not installed" until its config
#     script writes the installed system onto it.
# Idempotent (copies only what changed), quiet on success, "build_tiny_template: ERROR: ..."
# on failure.
# Usage: templates_os/build_tiny_template.sh [SHARE_DIR]   (default <repo>/data/os-templates)
set -euo pipefail

die() { echo "build_tiny_template: ERROR: $*" >&2; exit 1; }

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
SHARE=${1:-$REPO/data/os-templates}
CATALOG=$REPO/templates_os/catalog/tiny
GUEST=$REPO/.cache/tiny-guest

command -v qemu-img >/dev/null 2>&1 || die "'qemu-img' not found (run tests/infra/install_deps.sh)"
for f in template.toml user-data; do
  [ -s "$CATALOG/$f" ] || die "$CATALOG/$f is missing"
done
bash "$REPO/tests/infra/build_tiny_guest.sh" || die "building the tiny guest failed"

OUT=$SHARE/tiny
mkdir -p "$OUT" 2>/dev/null || die "cannot create $OUT"
chmod 755 "$SHARE" "$OUT"   # libvirt-qemu reads the kernel, initrd and image

# Copy $1 to $OUT/$2 unless identical (atomically: a running install may be reading it).
put() {
  local src=$1 dst=$OUT/$2
  cmp -s "$src" "$dst" && return 0
  cp "$src" "$dst.tmp.$$" && chmod 644 "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst" \
    || { rm -f "$dst.tmp.$$"; die "cannot copy $src to $dst"; }
}
put "$CATALOG/template.toml" template.toml
put "$CATALOG/user-data" user-data
put "$GUEST/vmlinuz" vmlinuz
put "$GUEST/initrd.img" initrd.img

if [ ! -s "$OUT/disk.qcow2" ]; then
  qemu-img create -q -f qcow2 "$OUT/disk.qcow2.tmp.$$" 1G >/dev/null \
    && chmod 644 "$OUT/disk.qcow2.tmp.$$" && mv -f "$OUT/disk.qcow2.tmp.$$" "$OUT/disk.qcow2" \
    || { rm -f "$OUT/disk.qcow2.tmp.$$"; die "qemu-img create $OUT/disk.qcow2 failed"; }
fi
