"""NoCloud seed ISOs for cloud-init image templates (built in Python with pycdlib)."""

import io

import pycdlib


def seed_iso(files: dict[str, str]) -> bytes:
    """An ISO 9660 image labelled `cidata` holding `files` (name -> text) at its root, with
    Joliet and Rock Ridge names so cloud-init finds `meta-data`, `user-data`, `network-config`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index};1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_seed(image: bytes) -> dict[str, str]:
    """The files of a seed ISO by their Rock Ridge names (for tests and diagnostics)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    files = {}
    for child in iso.list_children(rr_path="/"):
        name = child.rock_ridge.name().decode() if child.rock_ridge else ""
        if child.is_file():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue().decode()
    iso.close()
    return files
