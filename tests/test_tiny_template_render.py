"""The tiny template's install config (templates_os/catalog/tiny/user-data) renders safely.

Renders it the way the panel does (jinja2 SandboxedEnvironment, StrictUndefined, a `sh`
filter = shlex.quote, and a finalize that refuses any printed value that is neither
panel-trusted nor quoted) with hostile values, checks that the output parses (`sh -n`),
that hostile strings only appear inside single quotes, and (as root, with a static
busybox) runs it in a chroot and checks what it wrote. No VM, no database.
"""
from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from jinja2 import StrictUndefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

USER_DATA = Path(__file__).resolve().parent.parent / "templates_os" / "catalog" / "tiny" / "user-data"

HOSTILE_HOST = "a'; rm -rf / #"
HOSTILE_KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileKey a'; rm -rf / #",
    'ssh-rsa AAAAB3Nza $(touch /pwned) `touch /pwned2` "; reboot; echo "',
    "ssh-ed25519 AAAAC3Nz plain@host",
]
HASH = "$6$rounds=5000$salt$Xy/9Hk2.hash$with$dollars"

# A stand-in for the panel's recipe runner and call-back scripts.
RUNNER = """\
mkdir -p /var/log /srv
{ echo recipe ran; echo to-stderr >&2; echo marker >/srv/recipe-marker; } >/var/log/panel-recipe.log 2>&1
echo 3 >/var/log/panel-recipe.exit
exit 3
"""
CALLBACK = """\
{ echo "log: $(cat /var/log/panel-recipe.log | tr '\\n' ' ')"; echo "exit: $(cat /var/log/panel-recipe.exit)"; } >/callback-sent
exit 0
"""


class Trusted(str):
    """A value the panel vouches for (printed as is)."""


def _sh_filter(value) -> Trusted:
    return Trusted(shlex.quote(str(value)))


def _finalize(value):
    if isinstance(value, Trusted):
        return value
    raise SecurityError(f"printed value is neither trusted nor quoted: {value!r}")


def render(**overrides) -> str:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize,
                               keep_trailing_newline=True)
    env.filters["sh"] = _sh_filter
    ctx = {
        "hostname": HOSTILE_HOST,
        "root_password_hash": Trusted(HASH),
        "ssh_keys": list(HOSTILE_KEYS),
        "recipe_runner_b64": Trusted(base64.b64encode(RUNNER.encode()).decode()),
        "callback_b64": Trusted(base64.b64encode(CALLBACK.encode()).decode()),
    }
    ctx.update(overrides)
    return env.from_string(USER_DATA.read_text()).render(**ctx)


def _shells() -> list[list[str]]:
    shells = [["sh", "-n"]]
    if shutil.which("busybox"):
        shells.append(["busybox", "sh", "-n"])
    return shells


def test_renders_a_posix_sh_script_that_parses():
    out = render()
    assert out.startswith("#!/bin/sh\n")
    for shell in _shells():
        cp = subprocess.run([*shell], input=out, capture_output=True, text=True)
        assert cp.returncode == 0, f"{shell}: {cp.stderr}\n{out}"


def test_hostile_values_appear_only_single_quoted():
    out = render()
    quoted = [shlex.quote(v) for v in (HOSTILE_HOST, *HOSTILE_KEYS)]
    for q in quoted:
        assert q.startswith("'") and q in out, q
    rest = out
    for q in sorted(quoted, key=len, reverse=True):
        rest = rest.replace(q, "'X'")
    for fragment in ("rm -rf", "touch /pwned", "reboot", "Hostile", "plain@host", "$(", "`"):
        assert fragment not in rest, f"{fragment!r} outside single quotes:\n{rest}"


def test_every_printed_value_is_trusted_or_quoted():
    # The template itself passes the panel's rule (render() above) ...
    render(ssh_keys=[])
    # ... and the rule really bites: an unquoted untrusted value fails the rendering.
    env = SandboxedEnvironment(undefined=StrictUndefined, finalize=_finalize)
    with pytest.raises(SecurityError):
        env.from_string("hostname {{ hostname }}").render(hostname="x; reboot")
    with pytest.raises(Exception):   # StrictUndefined: a missing variable is an error
        env.from_string("{{ nope|sh }}").render()


def _busybox_static() -> str | None:
    bb = shutil.which("busybox")
    if not bb:
        return None
    cp = subprocess.run(["file", "-L", bb], capture_output=True, text=True) if shutil.which("file") else None
    if cp is not None and "statically linked" not in cp.stdout:
        return None
    return bb


def test_runs_in_a_chroot_and_writes_what_it_should(tmp_path):
    """Execute the rendered script in a busybox chroot inside a private UTS namespace (its
    `hostname` must never reach the host's; busybox sh runs its own applet whatever
    /bin/hostname is), without /dev/vda (nothing is persisted), and check its effects."""
    bb, chroot, unshare = _busybox_static(), shutil.which("chroot"), shutil.which("unshare")
    if os.geteuid() != 0 or bb is None or chroot is None or unshare is None:
        pytest.skip("needs root, unshare, chroot and a static busybox (busybox-static)")
    if subprocess.run([unshare, "--uts", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a UTS namespace here")
    root = tmp_path / "root"
    for d in ("bin", "etc", "tmp", "dev", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy(bb, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root::0:0:root:/root:/bin/sh\n")
    (root / "dev" / "ttyS0").write_text("")       # a plain file: collects the TINY-GUEST lines
    (root / "user-data").write_text(render())
    wrapper = ("/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin && /bin/busybox --install -s || exit 99;"
               " sh /user-data; rc=$?; hostname >/hostname-after; exit $rc")
    cp = subprocess.run([unshare, "--uts", chroot, str(root), "/bin/busybox", "sh", "-c", wrapper],
                        capture_output=True, text=True, timeout=30,
                        env={"PATH": "/sbin:/usr/sbin:/bin:/usr/bin"})
    assert cp.returncode == 3, f"{cp.returncode}\n{cp.stdout}{cp.stderr}"   # the recipe's code
    assert (root / "etc" / "hostname").read_text() == HOSTILE_HOST + "\n"
    assert (root / "hostname-after").read_text() == HOSTILE_HOST + "\n"
    assert (root / "etc" / "shadow").read_text() == f"root:{HASH}:19000:0:99999:7:::\n"
    assert (root / "etc" / "shadow").stat().st_mode & 0o777 == 0o600
    assert (root / "etc" / "passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"
    keys = root / "root" / ".ssh" / "authorized_keys"
    assert keys.read_text().splitlines() == HOSTILE_KEYS
    assert keys.stat().st_mode & 0o777 == 0o600
    assert keys.parent.stat().st_mode & 0o777 == 0o700
    assert (root / "srv" / "recipe-marker").read_text() == "marker\n"
    assert (root / "callback-sent").read_text() == "log: recipe ran to-stderr \nexit: 3\n"
    assert not (root / "pwned").exists() and not (root / "pwned2").exists()
    assert (root / "dev" / "ttyS0").read_text().splitlines() == [
        f"TINY-GUEST hostname {HOSTILE_HOST}",
        "TINY-GUEST recipe exit 3",
        "TINY-GUEST callback exit 0",
    ]
