"""deploy/local_node.sh's decisions, at its command boundary: the package tools, uname and
systemctl are stubs on PATH that record how they were called. (The real install and start run
in `make test` itself: tests/infra/ calls the same script.)"""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "local_node.sh"


@pytest.fixture
def stubs(tmp_path):
    """A bin folder of stubs; each logs `name args` to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"

    def stub(name: str, body: str = "exit 0") -> None:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        path.chmod(0o755)

    def run(*args, **env):
        result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return result, calls

    stub.run = run
    return stub


def test_an_installed_node_installs_nothing_and_says_nothing(stubs):
    stubs("dpkg-query", "echo installed")
    stubs("apt-get")
    result, calls = stubs.run("install")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert not [c for c in calls if c.startswith("apt-get")]


def test_missing_packages_are_named_once_then_installed_quietly(stubs):
    stubs("dpkg-query", 'case "$3" in qemu-system-x86|libvirt-clients) echo not-installed;; *) echo installed;; esac')
    stubs("apt-get")
    result, calls = stubs.run("install", LOCAL_NODE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "local node: installing qemu-system-x86 libvirt-clients (to run servers on this host)\n"
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 1 and installs[0].endswith(" qemu-system-x86 libvirt-clients")


def test_a_failed_install_is_retried_after_an_update_then_reported_as_not_a_node(stubs):
    stubs("dpkg-query", "echo not-installed")
    stubs("apt-get", 'case "$1" in install) echo "E: Unable to locate package" >&2; exit 100;; esac')
    result, calls = stubs.run("install", LOCAL_NODE_INIT="systemd")
    assert result.returncode == 3
    assert "this host cannot run guests: apt-get install" in result.stderr
    assert "the panel runs without a local node" in result.stderr
    assert [c.split()[1] for c in calls if c.startswith("apt-get")][-3:] == ["install", "update", "install"]


def test_a_host_of_another_architecture_is_not_a_node(stubs):
    stubs("uname", "echo aarch64")
    stubs("apt-get")
    for command in ("check", "install", "start"):
        result, calls = stubs.run(command)
        assert result.returncode == 3, command
        assert "the demo OS and templates are x86-64, this is aarch64" in result.stderr
        assert not [c for c in calls if c.startswith("apt-get")]


def test_a_libvirt_that_answers_is_left_alone(stubs):
    stubs("virsh")
    stubs("systemctl")
    stubs("libvirtd")
    result, calls = stubs.run("start", LOCAL_NODE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in calls] == ["virsh"]


def test_with_systemd_as_pid_1_libvirt_is_started_by_systemctl(stubs, tmp_path):
    up = tmp_path / "up"
    stubs("systemctl", f"touch {up}")
    stubs("virsh", f"test -e {up}")  # answers once started
    stubs("virtlogd")
    stubs("libvirtd")
    result, calls = stubs.run("start", LOCAL_NODE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    assert "systemctl enable --now virtlogd.socket libvirtd.socket" in calls
    assert not [c for c in calls if c.startswith(("virtlogd", "libvirtd"))]


def test_without_systemd_the_daemons_are_started_even_when_another_root_runs_them(stubs, tmp_path):
    # A chroot or container shares the host's process table: the host's libvirtd is not ours.
    up = tmp_path / "up"
    stubs("virsh", f"test -e {up}")
    stubs("virtlogd")
    stubs("libvirtd", f"touch {up}")
    stubs("systemctl")
    result, calls = stubs.run("start", LOCAL_NODE_INIT="sh")
    assert result.returncode == 0, result.stderr
    assert "virtlogd -d" in calls and "libvirtd -d" in calls
    assert calls.index("virtlogd -d") < calls.index("libvirtd -d")
    assert not [c for c in calls if c.startswith("systemctl")]


def test_libvirt_that_never_answers_is_an_error_within_the_timeout(stubs):
    stubs("systemctl")
    stubs("virsh", "exit 1")
    result, _calls = stubs.run("start", LOCAL_NODE_INIT="systemd", LOCAL_NODE_TIMEOUT="1")
    assert result.returncode == 1
    assert "libvirtd did not answer at qemu:///system within 1s" in result.stderr


def test_an_unknown_command_is_a_usage_error(stubs):
    result, _calls = stubs.run("frobnicate")
    assert result.returncode == 2 and "usage:" in result.stderr
