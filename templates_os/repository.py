"""The template share: scanning its folders into OsTemplate rows, each checked on the way.

A folder is a template when it holds `template.toml`. A template is valid when its metadata is
complete, its config template and command lines render in the sandbox with a sample server,
its settings are filled in and its files are on the share; otherwise the row says why, and the
template is never offered.
"""

import shutil
import tomllib
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from templates_os import render
from templates_os.models import OsTemplate

INSTALLERS = {choice.value for choice in OsTemplate.Installer}
CATALOG = Path(__file__).resolve().parent / "catalog"


class Invalid(Exception):
    """Why a template folder is not usable."""


def share() -> Path:
    return Path(settings.TEMPLATE_SHARE)


def _plain_file(meta: dict, key: str, section: dict) -> str | None:
    name = section.get(key)
    if name is None:
        return None
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise Invalid(f"{key} must be a file name inside the template's folder")
    return name


def load(folder: Path) -> dict:
    """The checked metadata of one template folder; Invalid says what is wrong."""
    try:
        meta = tomllib.loads((folder / "template.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Invalid(f"template.toml: {exc}") from exc
    for key in ("name", "installer", "config"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise Invalid(f"template.toml: {key} is missing")
    if meta["installer"] not in INSTALLERS:
        raise Invalid(f"installer must be one of {', '.join(sorted(INSTALLERS))}")
    for key, default in (("min_disk_gib", 1), ("install_timeout", 3600)):
        value = meta.setdefault(key, default)
        if not isinstance(value, int) or value < 1:
            raise Invalid(f"{key} must be a positive whole number")
    meta["family"], meta["version"] = str(meta.get("family", "")), str(meta.get("version", ""))
    boot = meta.setdefault("boot", {})
    if not isinstance(boot, dict):
        raise Invalid("[boot] must be a table")
    files = [_plain_file(meta, "config", meta)]
    files += [_plain_file(meta, key, boot) for key in ("kernel", "initrd", "image")]
    if boot.get("kernel") and not (boot.get("initrd") and boot.get("install_cmdline")):
        raise Invalid("a kernel boot needs initrd and install_cmdline")
    if not boot.get("kernel") and not boot.get("image"):
        raise Invalid("[boot] needs kernel + initrd (network install) or image (image install)")
    if not boot.get("kernel") and meta.get("seed") != "iso":
        raise Invalid('an image install without a kernel passes its config by seed = "iso" (cloud-init)')
    if meta.get("seed") == "iso" and meta["installer"] != "cloud-init":
        raise Invalid("a seed ISO is for cloud-init templates")
    if meta.get("seed") == "iso" and (folder / "network-config").is_file():
        files.append("network-config")
    unset = [name for name, value in meta.get("settings", {}).items() if value == ""]
    if unset:
        raise Invalid(f"set {', '.join(unset)} in [settings] of template.toml")
    download = meta.get("download", {})
    missing = [name for name in files if name and not (folder / name).is_file()]
    if missing:
        hints = "; ".join(f"{name}: {download[key]}" for key, name in
                          (("kernel", boot.get("kernel")), ("initrd", boot.get("initrd")), ("image", boot.get("image")))
                          if name in missing and key in download)
        raise Invalid(f"missing on the share: {', '.join(missing)}" + (f" (get {hints})" if hints else ""))
    _try_render(folder, meta)
    return meta


def _try_render(folder: Path, meta: dict) -> None:
    """Render everything once with a sample server: an unquoted value or a syntax error shows now."""
    from templates_os.provisioning import sample_context

    context = sample_context(meta)
    sources = {meta["config"]: (folder / meta["config"]).read_text()}
    for key in ("install_cmdline", "cmdline"):
        if meta["boot"].get(key):
            sources[f"[boot] {key}"] = meta["boot"][key]
    if (folder / "network-config").is_file() and meta.get("seed") == "iso":
        sources["network-config"] = (folder / "network-config").read_text()
    for where, source in sources.items():
        try:
            render.render(source, context)
        except render.RenderError as exc:
            raise Invalid(f"{where}: {exc}") from exc


def scan() -> list[OsTemplate]:
    """Bring the OsTemplate rows in step with the share; returns all of them."""
    root, now, seen = share(), timezone.now(), []
    folders = sorted(p for p in root.iterdir() if (p / "template.toml").is_file()) if root.is_dir() else []
    for folder in folders:
        try:
            meta, reason = load(folder), ""
        except Invalid as exc:
            meta, reason = {}, str(exc)
        fields = {"valid": not reason, "invalid_reason": reason, "scanned_at": now, "metadata": meta}
        if meta:
            fields.update(name=meta["name"][:100], family=meta["family"][:32], version=meta["version"][:32],
                          installer=meta["installer"], min_disk_gib=meta["min_disk_gib"],
                          install_timeout=meta["install_timeout"])
        OsTemplate.objects.update_or_create(slug=folder.name[:64], defaults=fields,
                                            create_defaults={"name": folder.name[:100], **fields})
        seen.append(folder.name[:64])
    OsTemplate.objects.exclude(slug__in=seen).update(valid=False, invalid_reason="not on the share any more",
                                                     scanned_at=now)
    return list(OsTemplate.objects.all())


def install_catalog(target: Path | None = None) -> list[str]:
    """Copy the shipped template definitions onto the share, never overwriting a file there
    (an admin's edited settings stay). Returns the files copied."""
    target = target or share()
    copied = []
    for source in sorted(CATALOG.rglob("*")):
        if source.is_file() and source.name != "README.md":
            dest = target / source.relative_to(CATALOG)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
                copied.append(str(dest))
    return copied
