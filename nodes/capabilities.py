"""What a node can do, probed once at install (remote nodes) or registration (the local node).

One shell script (`PROBE`) gathers raw facts; it runs through the installer's SSH shell on a
remote node and as a local subprocess on the panel's own host. `decide()` turns its output
into `{capability: {"ok": True | False | None, "detail": "…"}}` (None: could not tell), kept
on `Node.capabilities`. Every step of the script is side-effect free or cleans up after itself
(the traffic-shaping test runs in a throwaway network namespace) and has a timeout.

Placement reads the capabilities a server needs (`needs_of`): a node that lacks one is
filtered out with the reason; a node probed before this existed (no key) is allowed.
"""

import re
import subprocess

# Shown on the node page, in this order.
LABELS = {
    "kvm": "KVM (hardware virtualization)",
    "shaping": "Traffic shaping (tc htb + sfq)",
    "nwfilter": "Network filters (nwfilter clean-traffic)",
    "backup": "Backup API (libvirt ≥ 7.2 + QEMU)",
    "guest_agent": "Guest-agent channel (virtio-serial)",
    "nested": "Nested virtualization",
}

# What a node must have for a server that needs it, as the reason placement gives without it.
NEED_REASONS = {
    "shaping": "cannot apply bandwidth limits",
}

# Raw facts as `name=value` lines. Values never span lines; every command has a timeout.
# The shaping test replays what libvirt does for <bandwidth> on a tap (htb root, a class,
# an sfq leaf, a fw filter; an ingress qdisc with a policing u32 filter), on the loopback of
# a network namespace made for it and deleted on exit.
PROBE = r"""
say() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n\t' '  ' | cut -c1-300)"; }
T="timeout 20"
say cpu_flags "$(grep -owE 'vmx|svm' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then say dev_kvm yes; else say dev_kvm no; fi
nested=""
for m in kvm_intel kvm_amd; do
  [ -r "/sys/module/$m/parameters/nested" ] && nested="$m:$(cat "/sys/module/$m/parameters/nested")"
done
say nested "$nested"
ns="caps-probe-$$-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
if out=$($T ip netns add "$ns" 2>&1); then
  trap 'timeout 20 ip netns del "$ns" >/dev/null 2>&1' EXIT
  x() { $T ip netns exec "$ns" "$@" 2>&1; }
  x ip link set lo up >/dev/null
  if out=$(x tc qdisc add dev lo root handle 1: htb default 1); then say tc_htb ok; else say tc_htb "$out"; fi
  if out=$(x tc class add dev lo parent 1: classid 1:1 htb rate 1mbit ceil 1mbit); then say tc_class ok; else say tc_class "$out"; fi
  if out=$(x tc filter add dev lo parent 1:0 protocol all prio 1 handle 1 fw flowid 1); then say tc_fw ok; else say tc_fw "$out"; fi
  if out=$(x tc qdisc add dev lo ingress); then say tc_ingress ok; else say tc_ingress "$out"; fi
  if out=$(x tc filter add dev lo parent ffff: protocol all u32 match u32 0 0 police rate 1mbit burst 16kb mtu 64kb drop flowid :1); then
    say tc_police ok; else say tc_police "$out"; fi
  if out=$(x tc qdisc add dev lo parent 1:1 handle 2: sfq perturb 10); then say tc_sfq ok; else
    # the leaf needs the htb class: tell sfq apart from a missing htb with sfq at the root
    x tc qdisc del dev lo root >/dev/null
    if out2=$(x tc qdisc add dev lo root sfq perturb 10); then say tc_sfq ok; else say tc_sfq "$out2"; fi
  fi
else
  say netns "$out"
fi
V="virsh -c qemu:///system"
say virsh_version "$($T $V version 2>&1)"
if out=$($T $V nwfilter-list 2>&1); then
  say nwfilters "$(printf '%s\n' "$out" | awk 'NR>2 && NF {n++; if ($NF == "clean-traffic") c = 1} END {print n+0, (c ? "clean-traffic" : "")}')"
else say nwfilters_error "$out"; fi
caps=$($T $V domcapabilities --virttype qemu 2>&1) || caps=$($T $V domcapabilities 2>&1)
say domcaps_backup "$(printf '%s' "$caps" | grep -o "<backup supported='[a-z]*'" | head -n 1)"
say domcaps_channel "$(printf '%s' "$caps" | sed -n "/<channel supported='yes'>/,/<\/channel>/p" | grep -o '<value>[a-z]*</value>' | sed 's/<[^>]*>//g' | tr '\n' ' ')"
emulator=$(printf '%s' "$caps" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n 1)
say emulator "$emulator"
if [ -n "$emulator" ] && [ -x "$emulator" ]; then
  say qemu_serial "$($T "$emulator" -nodefaults -machine none -device help 2>&1 | grep -oE '"(virtio-serial-pci|virtserialport)"' | tr -d '"' | sort -u | tr '\n' ' ')"
fi
exit 0
"""

PROBE_TIMEOUT = 180


def parse(output: str) -> dict[str, str]:
    """The script's `name=value` lines as a dict (anything else is ignored)."""
    facts = {}
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z_]+", name):
            facts[name] = value.strip()
    return facts


def _version(text: str, what: str) -> tuple[int, ...] | None:
    match = re.search(rf"{what}\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in match.groups()) if match else None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _cap(ok: bool | None, detail: str) -> dict:
    return {"ok": ok, "detail": detail}


def _kvm(facts: dict) -> dict:
    flags = facts.get("cpu_flags", "").split()
    if not flags:
        return _cap(False, "no vmx/svm in /proc/cpuinfo: software emulation (TCG)")
    if facts.get("dev_kvm") != "yes":
        return _cap(False, f"{'/'.join(flags)} present but /dev/kvm is not usable: software emulation (TCG)")
    return _cap(True, f"{'/'.join(flags)} and /dev/kvm")


def _shaping(facts: dict) -> dict:
    if "netns" in facts:
        return _cap(None, f"not tested: no network namespace for the test ({facts['netns']})")
    steps = [("tc_htb", "tc htb"), ("tc_class", "tc htb class"), ("tc_sfq", "tc sfq"), ("tc_fw", "tc fw filter"),
             ("tc_ingress", "tc ingress"), ("tc_police", "tc u32 police")]
    if not any(key in facts for key, _ in steps):
        return _cap(None, "not tested")
    missing = [(label, facts.get(key, "not tested")) for key, label in steps if facts.get(key) != "ok"]
    if not missing:
        return _cap(True, "htb, sfq and ingress policing work (what libvirt's <bandwidth> uses)")
    if missing[0][0] == "tc htb class" and facts.get("tc_htb") != "ok":
        missing = missing[1:] or missing  # a class fails because its htb did: name the htb
    names = ", ".join(label for label, _ in missing)
    first_error = missing[0][1].removeprefix("Error: ").strip().rstrip(".")
    return _cap(False, f"{names} missing ({first_error})" if first_error else f"{names} missing")


def _nwfilter(facts: dict) -> dict:
    if "nwfilters_error" in facts:
        return _cap(False, f"libvirt lists no filters: {facts['nwfilters_error'][:160]}")
    if "nwfilters" not in facts:
        return _cap(None, "not tested")
    count, _, clean = facts["nwfilters"].partition(" ")
    if clean.strip() == "clean-traffic":
        return _cap(True, f"clean-traffic among {count} filters")
    return _cap(False, f"libvirt has no clean-traffic filter ({count} filters)")


def _backup(facts: dict) -> dict:
    libvirt = _version(facts.get("virsh_version", ""), "libvirt")
    if libvirt is None:
        return _cap(None, "libvirt version unknown")
    qemu = _version(facts.get("virsh_version", ""), "hypervisor: QEMU")
    qemu_text = f", QEMU {_dotted(qemu)}" if qemu else ""
    if libvirt < (7, 2):
        return _cap(False, f"libvirt {_dotted(libvirt)} < 7.2")
    supported = facts.get("domcaps_backup", "")
    if "'yes'" in supported:
        return _cap(True, f"libvirt {_dotted(libvirt)}{qemu_text}")
    if "'no'" in supported:
        return _cap(False, f"libvirt {_dotted(libvirt)}{qemu_text}: QEMU does not support backups")
    return _cap(None, f"libvirt {_dotted(libvirt)}{qemu_text}: domain capabilities say nothing of backups")


def _guest_agent(facts: dict) -> dict:
    if "domcaps_channel" not in facts:
        return _cap(None, "not tested")
    channels = facts["domcaps_channel"].split()
    if "unix" not in channels:
        return _cap(False, "libvirt offers no unix channel" + (f" (only {', '.join(channels)})" if channels else ""))
    serial = facts.get("qemu_serial")
    if serial is None:
        return _cap(True, "unix channel (QEMU's devices not listed)")
    if "virtserialport" in serial.split():
        return _cap(True, "unix channel, virtio-serial port")
    return _cap(False, f"{facts.get('emulator') or 'QEMU'} has no virtserialport device")


def _nested(facts: dict) -> dict:
    module, _, value = facts.get("nested", "").partition(":")
    if not module:
        return _cap(False, "no kvm_intel/kvm_amd module loaded")
    return _cap(value.strip() in ("Y", "1"), f"{module} nested={value.strip() or '?'}")


def decide(facts: dict) -> dict:
    """The probe's facts as {capability: {"ok", "detail"}} for every capability in LABELS."""
    return {"kvm": _kvm(facts), "shaping": _shaping(facts), "nwfilter": _nwfilter(facts), "backup": _backup(facts),
            "guest_agent": _guest_agent(facts), "nested": _nested(facts)}


def probe_local() -> dict:
    """Run the probe on this host (the local node)."""
    try:
        done = subprocess.run(["sh", "-c", PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {name: _cap(None, f"probe failed: {exc}") for name in LABELS}
    return decide(parse(done.stdout))


def probe_shell(shell) -> dict:
    """Run the probe on a remote node through the installer's NodeShell."""
    return decide(parse(shell.script(PROBE, check=False, timeout=PROBE_TIMEOUT).out))


def summary(capabilities: dict) -> str:
    """One line for the install log: "kvm no, shaping no, …"."""
    word = {True: "yes", False: "no", None: "unknown"}
    return ", ".join(f"{name} {word[capabilities[name]['ok']]}" for name in LABELS if name in capabilities)


def needs_of(plan) -> frozenset[str]:
    """The capabilities a server of `plan` needs on its node."""
    needs = set()
    if plan.bandwidth_mbit or getattr(plan, "throttled_mbit", 0):
        needs.add("shaping")
    return frozenset(needs)


def lacking(capabilities: dict | None, needs) -> str:
    """'' when a node with `capabilities` has every one of `needs` (unknown counts as having),
    else the reason, e.g. "cannot apply bandwidth limits: tc sfq missing (…)"."""
    for need in sorted(needs):
        cap = (capabilities or {}).get(need)
        if isinstance(cap, dict) and cap.get("ok") is False:
            return f"{NEED_REASONS.get(need, f'lacks {need}')}: {cap.get('detail') or LABELS.get(need, need) + ' missing'}"
    return ""
