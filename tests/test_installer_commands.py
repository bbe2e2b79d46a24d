"""The node installer at its command boundary: what it would run on a node, for what cannot run
here (NFS, LVM, the dnf family, package installs).

A scripted `FakeShell` (the interface of nodes.ssh.NodeShell: run, script, host_key) records
every argv and answers from a table of (matcher → Result). Plus `NodeShell.run`'s quoting
through a stubbed paramiko client, and the fixed scripts run for real through the local
/bin/sh where that is harmless (positional arguments, the authorized_keys script under a
temporary HOME).
"""

import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ValidationError

from nodes import installer
from nodes.models import Node, Storage
from nodes.ssh import NodeShell, Result, SshError
from tests.conftest import fake_node

OK = Result(0, "", "")


# -- the fake shell ---------------------------------------------------------------------------
def argv_is(*argv: str) -> Callable[[list[str]], bool]:
    return lambda a: a == list(argv)


def argv_starts(*prefix: str) -> Callable[[list[str]], bool]:
    return lambda a: a[: len(prefix)] == list(prefix)


def script_has(text: str) -> Callable[[list[str]], bool]:
    """A `sh -c BODY sh ARGS…` call whose body contains `text`."""
    return lambda a: a[:2] == ["sh", "-c"] and len(a) >= 4 and a[3] == "sh" and text in a[2]


@dataclass
class Call:
    argv: list[str]
    check: bool
    timeout: float


class FakeShell:
    """Same interface as NodeShell; answers from `table` (first matching entry wins).

    An answer is a Result, or a callable(argv) → Result for stateful answers. Unmatched commands
    answer `default`. With check=True a non-zero code raises SshError with NodeShell.run's text.
    """

    def __init__(self, table=(), default: Result = OK, host_key: str = "ssh-ed25519 AAAAfake"):
        self.table = list(table)
        self.default = default
        self.host_key = host_key
        self.calls: list[Call] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run(self, argv, *, check: bool = True, timeout: float = 600, stdin: str | None = None) -> Result:
        argv = list(argv)
        assert all(isinstance(item, str) for item in argv), argv
        self.calls.append(Call(argv, check, timeout))
        result = next(((answer(argv) if callable(answer) else answer) for match, answer in self.table if match(argv)),
                      self.default)
        if check and result.code != 0:
            detail = (result.err.strip() or result.out.strip()).splitlines()[-5:]
            raise SshError(f"`{shlex.join(argv)}` exited with {result.code}: {' / '.join(detail)}")
        return result

    def script(self, body: str, *args: str, check: bool = True, timeout: float = 600) -> Result:
        return self.run(["sh", "-c", body, "sh", *args], check=check, timeout=timeout)

    @property
    def argvs(self) -> list[list[str]]:
        return [c.argv for c in self.calls]

    def scripts(self) -> list[list[str]]:
        return [a for a in self.argvs if a[:2] == ["sh", "-c"]]


class Steps(list):
    def __call__(self, percent: int, message: str) -> None:
        self.append((percent, message))

    @property
    def messages(self) -> list[str]:
        return [m for _p, m in self]


# -- detect_family ------------------------------------------------------------------------------
DEBIAN_12 = '''PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
'''
UBUNTU_24 = '''PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
ID=ubuntu
ID_LIKE=debian
'''
ROCKY_9 = '''NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"
ANSI_COLOR="0;32"
'''
ALMA_9 = '''NAME="AlmaLinux"
VERSION="9.4 (Seafoam Ocelot)"
ID="almalinux"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"
'''
ARCH = '''NAME="Arch Linux"
PRETTY_NAME="Arch Linux"
ID=arch
BUILD_ID=rolling
'''
OPENSUSE = '''NAME="openSUSE Leap"
VERSION="15.6"
ID="opensuse-leap"
ID_LIKE="suse opensuse"
PRETTY_NAME="openSUSE Leap 15.6"
'''


@pytest.mark.parametrize("text, family, name", [
    (DEBIAN_12, "apt", "Debian GNU/Linux 12 (bookworm)"),
    (UBUNTU_24, "apt", "Ubuntu 24.04.1 LTS"),
    (ROCKY_9, "dnf", "Rocky Linux 9.4 (Blue Onyx)"),
    (ALMA_9, "dnf", "AlmaLinux 9.4 (Seafoam Ocelot)"),
])
def test_detect_family_reads_os_release(text, family, name):
    shell = FakeShell([(argv_is("cat", "/etc/os-release"), Result(0, text, ""))])
    assert installer.detect_family(shell) == (family, name)
    assert shell.argvs == [["cat", "/etc/os-release"]]


@pytest.mark.parametrize("text, name", [(ARCH, "Arch Linux"), (OPENSUSE, "openSUSE Leap 15.6")])
def test_detect_family_refuses_an_unknown_os_with_a_clear_message(text, name):
    shell = FakeShell([(argv_is("cat", "/etc/os-release"), Result(0, text, ""))])
    with pytest.raises(SshError) as err:
        installer.detect_family(shell)
    assert f"unsupported OS {name!r}" in str(err.value)
    assert "Debian/Ubuntu (apt) or RHEL-family (dnf)" in str(err.value)
    assert not err.value.retryable


def test_detect_family_without_os_release_fails_with_the_commands_error():
    shell = FakeShell([(argv_is("cat", "/etc/os-release"),
                        Result(1, "", "cat: /etc/os-release: No such file or directory"))])
    with pytest.raises(SshError, match="No such file or directory"):
        installer.detect_family(shell)


# -- install_packages -----------------------------------------------------------------------------
def package_world(family: str, missing: set[str], install_result: Result | None = None, fixes: bool = True):
    """A node where the probes of `missing` packages fail until the package manager installs them."""
    probes = {tuple(probe): package for package, probe in installer.REQUIREMENTS[family]}
    broken = set(missing)

    def probe(argv):
        return Result(127, "", f"sh: 1: {argv[0]}: not found") if probes[tuple(argv)] in broken else Result(0, "v 1.0\n", "")

    def install(argv):
        if install_result is not None:
            return install_result
        if fixes:
            broken.difference_update(argv)
        return Result(0, "", "")

    table = [(lambda a, p=p: a == list(p), probe) for p in probes]
    table += [(argv_starts("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update"), OK),
              (argv_starts("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install"), install),
              (argv_starts("dnf", "install"), install)]
    return FakeShell(table, default=Result(99, "", "unexpected command"))


def test_apt_with_everything_working_installs_nothing():
    shell, steps = package_world("apt", set()), Steps()
    installer.install_packages(shell, "apt", steps)
    assert not any("apt-get" in a or "dnf" in a for a in shell.argvs), shell.argvs
    assert shell.argvs == [probe for _package, probe in installer.REQUIREMENTS["apt"]]
    assert all(c.check is False for c in shell.calls)  # a failing probe is an answer, not an error
    assert steps == [(35, "virtualization packages: already installed")]


def test_apt_installs_exactly_the_missing_package_non_interactively():
    shell, steps = package_world("apt", {"qemu-system-x86"}), Steps()
    installer.install_packages(shell, "apt", steps)
    installs = [c for c in shell.calls if "install" in c.argv]
    assert [c.argv for c in installs] == [
        ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "qemu-system-x86"]]
    assert installs[0].check is True
    update = shell.argvs.index(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update", "-q"])
    assert update < shell.argvs.index(installs[0].argv)
    assert steps.messages == ["installing qemu-system-x86", "virtualization packages installed"]
    # every probe again after the install
    assert len([a for a in shell.argvs if a == ["qemu-system-x86_64", "--version"]]) == 2


def test_apt_installs_several_missing_packages_in_one_call():
    shell = package_world("apt", {"qemu-utils", "lvm2"})
    installer.install_packages(shell, "apt", Steps())
    assert [a for a in shell.argvs if "install" in a] == [
        ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "qemu-utils", "lvm2"]]


def test_dnf_installs_qemu_kvm_and_never_calls_apt():
    shell, steps = package_world("dnf", {"qemu-kvm"}), Steps()
    installer.install_packages(shell, "dnf", steps)
    assert [a for a in shell.argvs if "install" in a] == [["dnf", "install", "-y", "-q", "qemu-kvm"]]
    assert not any("apt-get" in a for a in shell.argvs)
    assert ["/usr/libexec/qemu-kvm", "--version"] in shell.argvs
    assert steps.messages == ["installing qemu-kvm", "virtualization packages installed"]


def test_a_failed_install_raises_naming_the_failure():
    failure = Result(100, "Reading package lists...\n", "E: Unable to locate package qemu-system-x86")
    shell, steps = package_world("apt", {"qemu-system-x86"}, install_result=failure), Steps()
    with pytest.raises(SshError) as err:
        installer.install_packages(shell, "apt", steps)
    message = str(err.value)
    assert message.startswith("installing the virtualization packages failed: ")
    assert "E: Unable to locate package qemu-system-x86" in message
    assert "exited with 100" in message
    assert steps.messages == ["installing qemu-system-x86"]


def test_a_package_that_still_does_not_work_after_installing_is_named():
    shell = package_world("dnf", {"libvirt"}, fixes=False)
    with pytest.raises(SshError, match="after installing, these still do not work: libvirt$"):
        installer.install_packages(shell, "dnf", Steps())


# -- libvirtd, CPU virtualization -----------------------------------------------------------------
@pytest.mark.parametrize("out, message", [("running\n", "libvirtd: already running"), ("started\n", "libvirtd: started")])
def test_start_libvirtd_is_one_fixed_script(out, message):
    shell, steps = FakeShell([(script_has("virsh -c qemu:///system version"), Result(0, out, ""))]), Steps()
    installer.start_libvirtd(shell, steps)
    assert shell.argvs == [["sh", "-c", installer.START_LIBVIRTD, "sh"]]
    assert steps.messages == [message]


def test_start_libvirtd_failure_is_an_error():
    shell = FakeShell([(script_has("virsh"), Result(1, "", "libvirtd does not answer on qemu:///system"))])
    with pytest.raises(SshError, match="libvirtd does not answer"):
        installer.start_libvirtd(shell, Steps())


@pytest.mark.parametrize("answer, expected", [
    (Result(0, "8\n", ""), True),
    (Result(1, "8\n", ""), False),  # flags, but no /dev/kvm
    (Result(1, "0\n", ""), False),
    (Result(2, "", "grep: /proc/cpuinfo: No such file"), False),
])
def test_cpu_virtualization(answer, expected):
    shell = FakeShell([(script_has("/proc/cpuinfo"), answer)])
    assert installer.cpu_virtualization(shell) is expected
    assert shell.calls[0].check is False


# -- storages ---------------------------------------------------------------------------------------
FIXED_SCRIPTS = set(installer.PREPARE_STORAGE.values()) | set(installer.CAPACITY.values())


def storage_world(prepare_out="created\n", df_out="  500   123\n", vgs_out="  931.51   400.25\n", **overrides):
    table = list(overrides.get("table", []))
    table += [(script_has("mountpoint -q"), Result(0, prepare_out, "")),
              (script_has("mkdir -p"), Result(0, prepare_out, "")),
              (script_has("vgs --noheadings"), Result(0, vgs_out, "")),
              (script_has('vgs "$3" >/dev/null'), Result(0, "exists\n", "")),
              (script_has("df -B1G"), Result(0, df_out, ""))]
    return FakeShell(table, default=Result(99, "", "unexpected command"))


@pytest.mark.django_db
def test_nfs_storage_values_go_in_as_positional_arguments():
    node = fake_node("n1")
    nfs = Storage.objects.create(cluster=node.cluster, name="shared", kind=Storage.Kind.NFS, path="/mnt/shared",
                                 nfs_source="nas.example.com:/export/vms")
    disks = Storage.objects.get(cluster=node.cluster, name="disks")
    shell, steps = storage_world(), Steps()
    capacity = installer.prepare_storages(shell, node, steps)

    assert ["sh", "-c", installer.PREPARE_STORAGE["nfs"], "sh", "/mnt/shared", "nas.example.com:/export/vms", "-"] \
        in shell.argvs
    assert ["sh", "-c", installer.CAPACITY["nfs"], "sh", "/mnt/shared", "nas.example.com:/export/vms", "-"] \
        in shell.argvs
    assert ["sh", "-c", installer.PREPARE_STORAGE["dir"], "sh", "/fake", "-", "-"] in shell.argvs
    for argv in shell.scripts():
        assert argv[2] in FIXED_SCRIPTS  # the body is always one of the fixed scripts …
        assert "/mnt/shared" not in argv[2] and "nas.example.com" not in argv[2]  # … never with values in it
    assert 'mount -t nfs "$2" "$1"' in installer.PREPARE_STORAGE["nfs"]
    assert capacity == {str(disks.id): {"total_gib": 500, "free_gib": 123},
                        str(nfs.id): {"total_gib": 500, "free_gib": 123}}
    assert "storage shared: prepared, 123 of 500 GiB free" in steps.messages


@pytest.mark.django_db
def test_an_existing_storage_is_reported_as_already_there():
    node = fake_node("n1")
    steps = Steps()
    installer.prepare_storages(storage_world(prepare_out="exists\n", df_out="2000 1500\n"), node, steps)
    assert steps.messages == ["storage disks: already there, 1500 of 2000 GiB free"]


@pytest.mark.django_db
def test_lvm_storage_asks_vgs_with_the_volume_group_as_an_argument():
    node = fake_node("n1")
    node.cluster.storages.all().delete()
    lvm = Storage.objects.create(cluster=node.cluster, name="fast", kind=Storage.Kind.LVM, volume_group="vg_panel")
    shell, steps = storage_world(), Steps()
    capacity = installer.prepare_storages(shell, node, steps)
    assert shell.argvs == [
        ["sh", "-c", 'vgs "$3" >/dev/null && echo exists', "sh", "/", "-", "vg_panel"],
        ["sh", "-c", installer.CAPACITY["lvm"], "sh", "/", "-", "vg_panel"],
    ]
    assert all("vg_panel" not in argv[2] for argv in shell.argvs)
    assert capacity == {str(lvm.id): {"total_gib": 931, "free_gib": 400}}  # "931.51" → 931, never rounded up
    assert steps.messages == ["storage fast: already there, 400 of 931 GiB free"]


@pytest.mark.django_db
def test_a_missing_volume_group_names_the_storage():
    node = fake_node("n1")
    Storage.objects.create(cluster=node.cluster, name="fast", kind=Storage.Kind.LVM, volume_group="vg_panel")
    shell = storage_world(table=[(script_has('vgs "$3" >/dev/null'),
                                  Result(5, "", '  Volume group "vg_panel" not found'))])
    with pytest.raises(SshError) as err:
        installer.prepare_storages(shell, node, Steps())
    assert str(err.value).startswith("storage fast (lvm): ")
    assert 'Volume group "vg_panel" not found' in str(err.value)


@pytest.mark.django_db
def test_a_failed_nfs_mount_names_the_storage():
    node = fake_node("n1")
    node.cluster.storages.all().delete()
    Storage.objects.create(cluster=node.cluster, name="shared", kind=Storage.Kind.NFS, path="/mnt/shared",
                           nfs_source="nas.example.com:/export/vms")
    shell = storage_world(table=[(script_has("mountpoint -q"),
                                  Result(32, "", "mount.nfs: access denied by server while mounting"))])
    with pytest.raises(SshError, match=r"^storage shared \(nfs\): .*access denied by server"):
        installer.prepare_storages(shell, node, Steps())


@pytest.mark.django_db
def test_a_failing_df_is_an_ssh_error_naming_the_storage():
    node = fake_node("n1")
    shell = storage_world(table=[(script_has("df -B1G"), Result(0, "", "df: /fake: Stale file handle"))])
    with pytest.raises(SshError, match=r"^storage disks \(dir\): "):
        installer.prepare_storages(shell, node, Steps())


HOSTILE_PATH = "/x; rm -rf /"


@pytest.mark.django_db
def test_a_hostile_path_is_only_ever_an_argument():
    node = fake_node("n1")
    # Storage.objects.create() skips validation: as if a bad value had reached the database anyway.
    Storage.objects.create(cluster=node.cluster, name="evil", kind=Storage.Kind.DIR, path=HOSTILE_PATH)
    shell = storage_world()
    installer.prepare_storages(shell, node, Steps())
    hostile = [a for a in shell.argvs if HOSTILE_PATH in a]
    assert len(hostile) == 2  # prepare + capacity
    for argv in shell.argvs:
        assert argv[2] in FIXED_SCRIPTS
        assert "rm -rf" not in argv[2]
    for argv in hostile:
        assert argv[4] == HOSTILE_PATH and argv[:2] == ["sh", "-c"] and argv[3] == "sh"


@pytest.mark.django_db
@pytest.mark.parametrize("fields, bad_field", [
    ({"kind": "dir", "path": HOSTILE_PATH}, "path"),
    ({"kind": "dir", "path": "/ok/$(reboot)"}, "path"),
    ({"kind": "nfs", "path": "/mnt/a", "nfs_source": "nas:/e;reboot"}, "nfs_source"),
    ({"kind": "lvm", "volume_group": "vg;reboot"}, "volume_group"),
    ({"kind": "lvm", "volume_group": "vg panel"}, "volume_group"),
])
def test_the_model_validator_rejects_hostile_storage_values(fields, bad_field):
    node = fake_node("n1")
    with pytest.raises(ValidationError) as err:
        Storage(cluster=node.cluster, name="evil", **fields).full_clean()
    assert bad_field in err.value.message_dict


@pytest.mark.parametrize("kind, script", sorted(installer.PREPARE_STORAGE.items()) + sorted(installer.CAPACITY.items()))
def test_the_storage_scripts_only_read_positional_parameters(kind, script):
    """Every `$` in the fixed scripts is a double-quoted "$1", "$2" or "$3" (or the script's own
    quoted "$out" and a command substitution): values come from nowhere else and are never
    split or globbed."""
    import re

    positional = len(re.findall(r'"\$[123]"', script))
    own = len(re.findall(r'"\$out"', script)) + script.count("$(")
    assert positional > 0 and script.count("$") == positional + own, script


def test_the_dir_script_really_is_idempotent_with_a_hostile_name(tmp_path):
    """Run the dir scripts through the local /bin/sh: the value stays one argument."""
    target = tmp_path / "a b; touch pwned" / "$(touch pwned2)"
    argv = ["sh", "-c", installer.PREPARE_STORAGE["dir"], "sh", str(target), "-", "-"]
    first = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=True)
    second = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert (first.stdout, second.stdout) == ("created\n", "exists\n")
    assert target.is_dir()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    df = subprocess.run(["sh", "-c", installer.CAPACITY["dir"], "sh", str(target), "-", "-"],
                        capture_output=True, text=True, check=True)
    size, free = df.stdout.split()  # two plain numbers, no "G" suffix
    assert int(size) >= int(free) >= 0


# -- NodeShell.run quoting, through a stubbed paramiko client -----------------------------------------
def host_key_line() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


class _Channel:
    def __init__(self, code):
        self.code = code

    def recv_exit_status(self):
        return self.code

    def shutdown_write(self):
        pass


class _Stream:
    def __init__(self, data: bytes = b"", code: int = 0):
        self.data, self.channel, self.written = data, _Channel(code), []

    def read(self):
        return self.data

    def write(self, text):
        self.written.append(text)


class StubClient:
    """Stands in for paramiko.SSHClient: records the command strings given to exec_command."""

    instances: list["StubClient"] = []
    answer = (b"", b"", 0)

    def __init__(self):
        self.commands: list[str] = []
        self.connected = None
        StubClient.instances.append(self)

    def get_host_keys(self):
        import paramiko

        return paramiko.HostKeys()

    def set_missing_host_key_policy(self, policy):
        self.policy = policy

    def connect(self, hostname, **kwargs):
        self.connected = (hostname, kwargs)

    def exec_command(self, command, timeout=None):
        self.commands.append(command)
        out, err, code = self.answer
        return _Stream(), _Stream(out, code), _Stream(err, code)

    def close(self):
        pass


@pytest.fixture
def stub_ssh(monkeypatch):
    import nodes.ssh

    StubClient.instances = []
    StubClient.answer = (b"", b"", 0)
    monkeypatch.setattr(nodes.ssh.paramiko, "SSHClient", StubClient)
    return StubClient


HOSTILE_ARGV = ["echo", "$(reboot)", "a;b", "`id`", "it's", 'say "hi"', "line1\nline2", "", " ", "*", "~",
                "a|b&c>d<e", "$HOME", "\\", "--", "-n", "x\ty", "ü € 日本"]


def test_node_shell_run_quotes_every_argument(stub_ssh):
    with NodeShell("10.0.0.5", 2222, "root", host_key_line(), password="secret") as shell:
        result = shell.run(HOSTILE_ARGV)
    client = stub_ssh.instances[0]
    assert client.connected[0] == "10.0.0.5" and client.connected[1]["port"] == 2222
    (command,) = client.commands
    assert shlex.split(command) == HOSTILE_ARGV
    assert result == Result(0, "", "")


def test_a_posix_shell_receives_exactly_the_argv(stub_ssh, tmp_path):
    """What the node's login shell would do with the command string: run it with the local sh,
    with printf in place of the program, and get every argument back unchanged."""
    with NodeShell("10.0.0.5", 22, "root", host_key_line(), password="secret") as shell:
        shell.run(["printf", "%s\\0", *HOSTILE_ARGV])
    (command,) = stub_ssh.instances[0].commands
    out = subprocess.run(["sh", "-c", command], capture_output=True, cwd=tmp_path, check=True).stdout
    assert out.decode().split("\0")[:-1] == HOSTILE_ARGV


def test_node_shell_script_passes_values_as_positional_parameters(stub_ssh, tmp_path):
    body = 'printf "%s\\0" "$@"'
    with NodeShell("10.0.0.5", 22, "root", host_key_line(), password="secret") as shell:
        shell.script(body, *HOSTILE_ARGV)
    (command,) = stub_ssh.instances[0].commands
    assert shlex.split(command) == ["sh", "-c", body, "sh", *HOSTILE_ARGV]
    out = subprocess.run(["sh", "-c", command], capture_output=True, cwd=tmp_path, check=True).stdout
    assert out.decode().split("\0")[:-1] == HOSTILE_ARGV


def test_node_shell_run_raises_on_a_non_zero_exit_only_if_checked(stub_ssh):
    stub_ssh.answer = (b"partial\n", b"E: Unable to locate package foo\n", 100)
    with NodeShell("10.0.0.5", 22, "root", host_key_line(), password="secret") as shell:
        with pytest.raises(SshError) as err:
            shell.run(["apt-get", "install", "-y", "foo"])
        unchecked = shell.run(["apt-get", "install", "-y", "foo"], check=False)
    assert str(err.value) == "`apt-get install -y foo` exited with 100: E: Unable to locate package foo"
    assert unchecked == Result(100, "partial\n", "E: Unable to locate package foo\n")


# -- authorize_panel_key ------------------------------------------------------------------------------
def authorized_keys_world():
    keys: list[str] = []

    def answer(argv):
        key = argv[4]
        if key in keys:
            return Result(0, "present\n", "")
        keys.append(key)
        return Result(0, "added\n", "")

    return FakeShell([(script_has("authorized_keys"), answer)], default=Result(99, "", "unexpected")), keys


@pytest.mark.django_db
def test_authorize_panel_key_passes_the_key_as_an_argument_and_is_idempotent():
    from nodes.ssh import panel_identity

    public = panel_identity()[1]
    shell, keys = authorized_keys_world()
    steps = Steps()
    installer.authorize_panel_key(shell, steps)
    installer.authorize_panel_key(shell, steps)
    assert keys == [public]
    assert len(shell.argvs) == 2 and shell.argvs[0] == shell.argvs[1]
    argv = shell.argvs[0]
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", public]
    assert public.split()[1] not in argv[2] and '"$1"' in argv[2]
    assert steps.messages == ["the panel's SSH key: installed", "the panel's SSH key: already authorized"]


@pytest.mark.django_db
def test_the_authorize_script_really_is_idempotent(tmp_path, monkeypatch):
    """The script run by the local sh under a temporary HOME: one line, 0600, twice → added, present."""
    captured = []

    class Capture(FakeShell):
        def run(self, argv, **kw):
            captured.append(argv)
            done = subprocess.run(argv, capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
            return Result(done.returncode, done.stdout, done.stderr)

    steps = Steps()
    installer.authorize_panel_key(Capture(), steps)
    installer.authorize_panel_key(Capture(), steps)
    from nodes.ssh import panel_identity

    authorized = tmp_path / ".ssh" / "authorized_keys"
    assert authorized.read_text() == panel_identity()[1] + "\n"
    assert oct(authorized.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / ".ssh").stat().st_mode & 0o777) == "0o700"
    assert steps.messages == ["the panel's SSH key: installed", "the panel's SSH key: already authorized"]


# -- install(): the family check comes before any change ----------------------------------------------------
@pytest.mark.django_db
def test_install_refuses_a_dnf_node_in_an_apt_cluster_before_changing_anything(monkeypatch):
    node = fake_node("n1", address="10.0.0.5", host_key="ssh-ed25519 AAAApinned", state=Node.State.INSTALLING)
    shell = FakeShell([(argv_is("cat", "/etc/os-release"), Result(0, ROCKY_9, ""))],
                      default=Result(99, "", "unexpected command"))
    monkeypatch.setattr(installer, "NodeShell", lambda *a, **kw: shell)
    steps = Steps()
    with pytest.raises(SshError, match="cluster c1 is apt, this node is dnf"):
        installer.install(steps, node)
    assert shell.argvs == [["cat", "/etc/os-release"]]  # no password: the key step is skipped
    node.refresh_from_db()
    assert node.state == Node.State.INSTALLING


# -- networks ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_networks_become_bridges_with_values_only_as_arguments():
    from nodes.models import Network

    node = fake_node("n1")
    Network.objects.create(cluster=node.cluster, name="public", kind="bridged", bridge="br-pub", interface="eth1",
                           vlan=100)
    Network.objects.create(cluster=node.cluster, name="private", kind="nat", bridge="br-nat",
                           nat_cidr="10.0.8.0/24")
    shell = FakeShell(default=Result(0, "created\n", ""))
    steps = Steps()
    installer.prepare_networks(shell, node, steps)
    bridged, nat = shell.scripts()
    assert bridged[2] == installer.BRIDGED_NETWORK and bridged[4:] == ["br-pub", "eth1.100", "eth1", "100"]
    assert nat[2] == installer.NAT_NETWORK and nat[4:] == ["br-nat", "10.0.8.1/24", "10.0.8.0/24"]
    assert "bridge br-pub over eth1.100: created" in steps.messages
    assert "NAT bridge br-nat for 10.0.8.0/24: created" in steps.messages


@pytest.mark.django_db
def test_a_missing_uplink_fails_naming_the_network():
    from nodes.models import Network

    node = fake_node("n1")
    Network.objects.create(cluster=node.cluster, name="public", kind="bridged", bridge="br-pub", interface="eth9")
    shell = FakeShell(table=[(script_has("ip link show"), Result(1, "", "no interface eth9 on this node"))])
    with pytest.raises(SshError, match=r"(?s)^network public: .*no interface eth9"):
        installer.prepare_networks(shell, node, Steps())


def test_the_bridged_network_script_is_idempotent_in_a_real_shell(tmp_path):
    """Run the script with a stub `ip` that records calls: the second run creates nothing."""
    import os

    state = tmp_path / "links"
    state.write_text("eth1\n")
    stub = tmp_path / "ip"
    stub.write_text(
        "#!/bin/sh\n"
        f"S={state}\n"
        'case "$1 $2" in\n'
        '  "link show") grep -qx "$3" "$S" ;;\n'
        '  "link add") echo "$3" >> "$S"; echo "add $*" >> "$S.log" ;;\n'
        '  *) echo "$*" >> "$S.log" ;;\n'
        "esac\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    argv = ["sh", "-c", installer.BRIDGED_NETWORK, "sh", "br-pub", "eth1", "eth1", ""]
    first = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    second = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    assert first.stdout.strip() == "created" and second.stdout.strip() == "exists"
    assert (tmp_path / "links.log").read_text().count("link add") == 1
