"""Drive the tiny test guest (deploy/build_demo_os.sh) from tests.

The guest runs a root shell on tty1 (VGA console). We type into it with
``virsh send-key --codeset linux`` and read what it writes to ``/dev/ttyS0`` from the
domain's serial log file.

``run`` is any callable with the signature of ``subprocess.run`` taking an argv list
(``capture_output``/``text`` are passed explicitly), e.g. ``subprocess.run`` for the
host's libvirt or ``functools.partial(cluster.run, 1)`` for a domain in cluster node 1.
``serial_log_reader`` is a callable returning the current text of the serial log
(e.g. ``lambda: Path(p).read_text(errors="replace")``).

    from tests.guest import type_into, guest_command, wait_shell
    wait_shell(subprocess.run, "netcheck-1", reader)
    code, out = guest_command(subprocess.run, "netcheck-1", reader, "ping -c 1 10.77.9.1")

Stdlib only.
"""
from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

DEFAULT_URI = "qemu:///system"
UPTIME_LINE = re.compile(r"^TINY-GUEST uptime \S+\s*$")
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")   # printk on console=ttyS0

# US layout: character -> (key, needs shift)
_UNSHIFTED = {
    " ": "KEY_SPACE", "\n": "KEY_ENTER", "\t": "KEY_TAB",
    ".": "KEY_DOT", ",": "KEY_COMMA", "/": "KEY_SLASH", ";": "KEY_SEMICOLON",
    "'": "KEY_APOSTROPHE", "[": "KEY_LEFTBRACE", "]": "KEY_RIGHTBRACE", "\\": "KEY_BACKSLASH",
    "-": "KEY_MINUS", "=": "KEY_EQUAL", "`": "KEY_GRAVE",
}
_SHIFTED = {
    ">": "KEY_DOT", "<": "KEY_COMMA", "?": "KEY_SLASH", ":": "KEY_SEMICOLON",
    '"': "KEY_APOSTROPHE", "{": "KEY_LEFTBRACE", "}": "KEY_RIGHTBRACE", "|": "KEY_BACKSLASH",
    "_": "KEY_MINUS", "+": "KEY_EQUAL", "~": "KEY_GRAVE",
    "!": "KEY_1", "@": "KEY_2", "#": "KEY_3", "$": "KEY_4", "%": "KEY_5", "^": "KEY_6",
    "&": "KEY_7", "*": "KEY_8", "(": "KEY_9", ")": "KEY_0",
}


class GuestError(RuntimeError):
    pass


def keys_for(ch: str) -> list[str]:
    """The linux key codes that type one character (shift first if needed)."""
    if "a" <= ch <= "z":
        return [f"KEY_{ch.upper()}"]
    if "A" <= ch <= "Z":
        return ["KEY_LEFTSHIFT", f"KEY_{ch}"]
    if "0" <= ch <= "9":
        return [f"KEY_{ch}"]
    if ch in _UNSHIFTED:
        return [_UNSHIFTED[ch]]
    if ch in _SHIFTED:
        return ["KEY_LEFTSHIFT", _SHIFTED[ch]]
    raise ValueError(f"cannot type {ch!r}")


def type_into(run: Callable, domain: str, text: str, uri: str = DEFAULT_URI,
              batch: int = 40, holdtime: int = 10) -> None:
    """Type ``text`` on the guest's keyboard ("\\n" is Enter).

    Each character is one ``send-key`` (its keys are pressed together, so a character
    with shift is KEY_LEFTSHIFT + key). Up to ``batch`` characters go into one ``virsh``
    process as ``send-key …; send-key …`` (virsh's command separator), so there is one
    process per batch, not per key. QEMU queues the events in order. ``holdtime`` (ms)
    is how long each key is held down.
    """
    for ch in text:
        keys_for(ch)                      # validate everything before typing anything
    for start in range(0, len(text), batch):
        chunk = text[start:start + batch]
        cmds = [f"send-key {domain} --codeset linux --holdtime {holdtime} {' '.join(keys_for(ch))}"
                for ch in chunk]
        cp = run(["virsh", "-q", "-c", uri, " ; ".join(cmds)], capture_output=True, text=True)
        if cp.returncode != 0:
            raise GuestError(f"virsh send-key to {domain} failed ({cp.returncode}): "
                             f"{(cp.stderr or cp.stdout or '').strip()}")


def new_marker() -> str:
    """A marker that is unique per call and typeable: 'tgm' + 12 hex digits."""
    return "tgm" + secrets.token_hex(6)


def _find_marker(text: str, marker: str) -> re.Match | None:
    return re.search(rf"(?m)^{re.escape(marker)} (\d+)\r?$", text)


def _strip_noise(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(l for l in lines if not (UPTIME_LINE.match(l) or KERNEL_LINE.match(l)))


def guest_command(run: Callable, domain: str, serial_log_reader: Callable[[], str],
                  command: str, marker: str | None = None, timeout: float = 30.0,
                  uri: str = DEFAULT_URI, poll: float = 0.1) -> tuple[int, str]:
    """Run ``command`` in the guest's tty1 shell; return (exit code, its output).

    Types ``<command> > /dev/ttyS0 2>&1; echo <marker> $? > /dev/ttyS0`` and Enter, and
    waits until the line ``<marker> <code>`` shows up in the serial log after the point
    where the log ended before typing. The output is the serial text between that point
    and the marker line, without the guest's ``TINY-GUEST uptime`` lines and kernel
    console messages (``[   28.9] …``), stripped.
    Only the last command of a pipeline/list in ``command`` is redirected: wrap it in
    ``( … )`` if needed. ``marker`` defaults to a fresh random one (pass only unique
    values). Raises GuestError on timeout.
    """
    marker = marker or new_marker()
    if not re.fullmatch(r"[a-z0-9_]+", marker):
        raise ValueError("marker must be [a-z0-9_]+")
    before = len(serial_log_reader())
    type_into(run, domain, f"{command} > /dev/ttyS0 2>&1; echo {marker} $? > /dev/ttyS0\n", uri)
    end = time.monotonic() + timeout
    while True:
        text = serial_log_reader()
        if len(text) < before:            # log truncated (domain restarted)
            before = 0
        tail = text[before:]
        m = _find_marker(tail, marker)
        if m:
            return int(m.group(1)), _strip_noise(tail[:m.start()]).strip()
        if time.monotonic() >= end:
            raise GuestError(f"no '{marker}' line from {domain} within {timeout:.0f} s "
                             f"(command {command!r}); serial tail:\n{text[-1500:]}")
        time.sleep(poll)


def wait_shell(run: Callable, domain: str, serial_log_reader: Callable[[], str],
               timeout: float = 30.0, attempt: float = 3.0, uri: str = DEFAULT_URI) -> float:
    """Wait until the tty1 shell executes typed commands; returns the seconds it took.

    Keys typed before the shell owns tty1 may be lost, so this types a harmless
    ``echo <marker> 0 > /dev/ttyS0`` (a new marker per attempt, after Ctrl-U to clear a
    partial line) every ``attempt`` seconds until one marker comes back.
    """
    t0 = time.monotonic()
    end = t0 + timeout
    markers = []
    while True:
        m = new_marker()
        markers.append(m)
        run(["virsh", "-q", "-c", uri, f"send-key {domain} --codeset linux KEY_LEFTCTRL KEY_U"],
            capture_output=True, text=True)
        type_into(run, domain, f"echo {m} 0 > /dev/ttyS0\n", uri)
        stop = min(end, time.monotonic() + attempt)
        while time.monotonic() < stop:
            text = serial_log_reader()
            if any(_find_marker(text, x) for x in markers):
                return time.monotonic() - t0
            time.sleep(0.1)
        if time.monotonic() >= end:
            raise GuestError(f"the tty1 shell of {domain} did not answer within {timeout:.0f} s; "
                             f"serial tail:\n{serial_log_reader()[-1500:]}")
