"""The image side of a server: snapshots, data disks, clones and golden templates, the ISO
library and OVF/OVA transfers. Each lives in its own module of this package; this module
gathers their models for Django."""
from panel.images.disks import DataDisk  # noqa: F401,E402
from panel.images.golden import CloneBase, CloneOrigin, GoldenTemplate  # noqa: F401
from panel.images.isos import Iso, ServerMedia  # noqa: F401  (the ISO library and boot media)
from panel.images.snapshots import Snapshot  # noqa: F401  (external snapshots of the system disk)
