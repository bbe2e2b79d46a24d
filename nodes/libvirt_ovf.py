"""OVF/OVA export on a node through libvirt: a server's disk written as one standalone image
in a portable format, on the node (the bytes that then cross to the panel are the converted,
compressed ones; the disk may be a thin overlay of a template's image, which the copy includes).

Contract (the fake driver keeps it too): `export_disk` writes `dest` in `pool` from `source`
as a streamOptimized VMDK or a standalone qcow2, replacing `dest`; a failure leaves no `dest`.
`source_format` is given, never probed (a raw disk's guest could write a qcow2 header into it).
The domain must be off (the caller checks): nothing writes to the disk while it is read.
"""

from nodes.libvirt_errors import DriverError, reconnecting

EXPORT_FORMATS = {"vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"], "qcow2": ["-O", "qcow2", "-c"]}

# Runs on the node: $1 source, $2 dest, $3 the source's format, then qemu-img's output
# options. The .part is removed on any failure so a broken export never looks finished.
EXPORT_SCRIPT = r"""
src=$1; dest=$2; given=$3; shift 3
qemu-img convert -q -f "$given" "$src" "$@" "$dest.part" || { rm -f "$dest.part"; exit 1; }
mv -f "$dest.part" "$dest"
"""


class LibvirtOvf:
    """The OVF half of LibvirtDriver (mixed into it; uses its connection helpers)."""

    @reconnecting
    def export_disk(self, pool: str, source: str, dest: str, fmt: str, source_format: str = "qcow2") -> None:
        if fmt not in EXPORT_FORMATS or source_format not in ("qcow2", "raw"):
            raise DriverError(f"unknown export format {fmt!r} (from {source_format!r})")
        root = self._pool_path(pool)
        self._run_on_node(["sh", "-c", EXPORT_SCRIPT, "sh", f"{root}/{source}", f"{root}/{dest}",
                           source_format, *EXPORT_FORMATS[fmt]])
        self._call("refresh pool", self._pool(pool).refresh, 0)
