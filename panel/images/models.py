"""The image side of a server: snapshots, data disks, clones and golden templates, the ISO
library and OVF/OVA transfers. Each lives in its own module of this package; this module
gathers their models for Django."""

from panel.images.disks import DataDisk
from panel.images.golden import CloneBase, CloneOrigin, GoldenTemplate
from panel.images.isos import Iso, ServerMedia
from panel.images.snapshots import Snapshot

__all__ = ["CloneBase", "CloneOrigin", "DataDisk", "GoldenTemplate", "Iso", "ServerMedia", "Snapshot"]
