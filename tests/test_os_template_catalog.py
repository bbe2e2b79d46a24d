"""The shipped OS templates (templates_os/catalog) and recipes (recipes/catalog).

Every template renders in the sandbox (templates_os/render.py) with a context that follows
the install-config contract; kickstarts pass pykickstart's RHEL 9 parser, the preseed's late
command and the cloud-init YAML say what they should; hostile hostnames, SSH keys and
settings never leave their place (or the rendering fails). Recipes load, declare their
parameters properly and are valid shell. No database.
"""

import base64
import re
import shlex
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml
from pykickstart import constants as ks_constants
from pykickstart.errors import KickstartParseWarning
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL9, makeVersion

from templates_os.render import RenderError, Trusted, render

ROOT = Path(__file__).resolve().parent.parent
OS_CATALOG = ROOT / "templates_os" / "catalog"
RECIPE_CATALOG = ROOT / "recipes" / "catalog"

ALL_TEMPLATES = sorted(p.name for p in OS_CATALOG.iterdir() if (p / "template.toml").is_file())
KICKSTARTS = ["almalinux-9", "rocky-9"]
PRESEEDS = ["debian-12"]
CLOUD_IMAGES = ["ubuntu-24.04"]
OURS = KICKSTARTS + PRESEEDS + CLOUD_IMAGES
RECIPES = sorted(p.stem for p in RECIPE_CATALOG.glob("*.toml"))

# What an admin fills in on the share, per setting name.
SITE_SETTINGS = {
    "repo": "https://mirror.example.net/almalinux/9.5/BaseOS/x86_64/os/",
    "mirror": "deb.mirror.example.net",
}

HASH = "$6$Xq3vT9bLm2pQ8sWz$a3VAA2HHsc9QDp00XkremU5PxKp3aVAEo0b45zYuCQTLzfAF.6CB/U4ZQxwSiQMTcWDq8uf1fls1TCf7qmCk21"
KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7vbqajDhA2gW1p3bL1Yx5Xn9s bob's desk",
]
RUNNER = ("#!/bin/sh\n# runner (test)\nTEXT='hello'; export TEXT\nmkdir -p /var/log\n"
          "echo 0 >/var/log/panel-recipe.exit\n")
CALLBACK = "#!/bin/sh\n# callback (test)\ncurl -fsS -X POST 'http://192.0.2.1:8000/provision/CB/done?exit=0'\n"
CONFIG_URL = "http://192.0.2.1:8000/provision/Zm9vYmFyYmF6cXV4/"
CALLBACK_URL = "http://192.0.2.1:8000/provision/0f1e2d3c4b5a/done"

ETH0 = {"name": "eth0", "mac": "52:54:00:3a:7c:01",
        "ipv4": [{"address": "203.0.113.10", "prefix": 24, "netmask": "255.255.255.0", "gateway": "203.0.113.1"}],
        "ipv6": [{"address": "2001:db8:0:1a::", "prefix": 64, "gateway": "2001:db8::1"}]}
DNS = ["203.0.113.53", "2001:db8::53"]

# What an SSH key or a hostname of an attacker could look like.
HOSTILE_WORDS = ["x'; reboot; #", 'x"; reboot; #', "x$(reboot)`reboot`", "x\\", "%post --nochroot"]
LINE_BREAKS = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029"]


# -- the context --------------------------------------------------------------------------------
def make_net(interfaces: list[dict], dns: list[str]) -> dict:
    """`net` as the contract describes it (what templates_os.provisioning builds)."""
    def first(version):
        for entry in interfaces:
            if entry[version]:
                return {**entry[version][0], "mac": entry["mac"], "interface": entry["name"]}
        return None

    return {"interfaces": interfaces, "ipv4": first("ipv4"), "ipv6": first("ipv6"), "dns": list(dns),
            "panel_args": Trusted("panel.ip=eth0,203.0.113.10/24,203.0.113.1")}


def template_meta(slug: str) -> dict:
    meta = tomllib.loads((OS_CATALOG / slug / "template.toml").read_text())
    meta["settings"] = {name: value or SITE_SETTINGS.get(name, "site-value")
                        for name, value in meta.get("settings", {}).items()}
    return meta


def sample_context(**overrides) -> dict:
    """A realistic install-config context: one NIC with one IPv4 and one IPv6 address, two
    SSH keys, a recipe. `template` defaults to AlmaLinux 9's metadata with its settings set."""
    context = {
        "hostname": "web1.example.com",
        "root_password_hash": Trusted(HASH),
        "ssh_keys": list(KEYS),
        "net": make_net([ETH0], DNS),
        "recipe": {"name": "Marker file", "slug": "marker"},
        "recipe_runner_b64": Trusted(base64.b64encode(RUNNER.encode()).decode()),
        "callback_b64": Trusted(base64.b64encode(CALLBACK.encode()).decode()),
        "config_url": Trusted(CONFIG_URL),
        "callback_url": Trusted(CALLBACK_URL),
        "template": template_meta("almalinux-9"),
        "server_uuid": "7d3f0b6e-1c2a-4e59-9a41-5b8c2d7e9f10",
    }
    context.update(overrides)
    return context


def boot_context(**overrides) -> dict:
    """What the panel gives a kernel command line and a seed's network-config: no secrets."""
    return sample_context(root_password_hash=Trusted(""), ssh_keys=[], callback_url=Trusted(""), **overrides)


def multi_nic_net() -> dict:
    """Two NICs: a public one with two IPv4 and one IPv6 address, a private one."""
    eth0 = {**ETH0, "ipv4": ETH0["ipv4"] + [{"address": "203.0.113.11", "prefix": 24, "netmask": "255.255.255.0",
                                              "gateway": ""}]}
    eth1 = {"name": "eth1", "mac": "52:54:00:3a:7c:02",
            "ipv4": [{"address": "10.10.0.5", "prefix": 16, "netmask": "255.255.0.0", "gateway": "10.10.0.1"}],
            "ipv6": []}
    return make_net([eth0, eth1], DNS)


def ipv6_only_net() -> dict:
    return make_net([{**ETH0, "ipv4": []}], ["2001:db8::53"])


def render_config(slug: str, **overrides) -> str:
    meta = template_meta(slug)
    return render((OS_CATALOG / slug / meta["config"]).read_text(), sample_context(template=meta, **overrides))


def render_cmdline(slug: str, key: str = "install_cmdline", **overrides) -> str:
    meta = template_meta(slug)
    return render(meta["boot"][key], boot_context(template=meta, **overrides))


def render_network_config(slug: str, **overrides) -> str:
    meta = template_meta(slug)
    return render((OS_CATALOG / slug / "network-config").read_text(), boot_context(template=meta, **overrides))


# -- every template ------------------------------------------------------------------------------
@pytest.mark.parametrize("slug", ALL_TEMPLATES)
def test_template_metadata(slug):
    folder = OS_CATALOG / slug
    meta = tomllib.loads((folder / "template.toml").read_text())
    assert isinstance(meta["name"], str) and meta["name"]
    assert meta["family"] in {"rhel", "debian", "ubuntu", "tiny"}
    assert isinstance(meta["version"], str) and meta["version"]
    assert meta["installer"] in {"kickstart", "preseed", "cloud-init"}
    assert isinstance(meta["min_disk_gib"], int) and meta["min_disk_gib"] >= 1
    assert isinstance(meta["install_timeout"], int) and meta["install_timeout"] >= 60
    assert (folder / meta["config"]).is_file()
    boot = meta["boot"]
    if boot.get("kernel"):
        assert boot.get("initrd") and boot.get("install_cmdline")
    else:
        assert boot.get("image") and meta.get("seed") == "iso" and meta["installer"] == "cloud-init"
    for name in ("kernel", "initrd", "image"):
        if boot.get(name):
            assert "/" not in boot[name] and not boot[name].startswith(".")
    for value in meta.get("settings", {}).values():
        assert isinstance(value, str)


@pytest.mark.parametrize("slug", OURS)
def test_our_templates_say_where_their_files_come_from(slug):
    meta = tomllib.loads((OS_CATALOG / slug / "template.toml").read_text())
    for name in ("kernel", "initrd", "image"):
        if meta["boot"].get(name):
            assert meta["download"][name]
    readme = (OS_CATALOG / "README.md").read_text()
    assert f"## {meta['name']}" in readme and f"`{slug}`" in readme
    for setting in meta.get("settings", {}):
        assert f"`{setting}`" in readme
    assert not re.search(r"https?://|ftp://", readme), "the README names no web addresses"


@pytest.mark.parametrize("slug", ALL_TEMPLATES)
def test_every_template_renders_with_the_contract(slug):
    meta = template_meta(slug)
    folder = OS_CATALOG / slug
    assert render((folder / meta["config"]).read_text(), sample_context(template=meta))
    for key in ("install_cmdline", "cmdline"):
        if meta["boot"].get(key):
            assert render(meta["boot"][key], boot_context(template=meta)).strip()
    if meta.get("seed") == "iso" and (folder / "network-config").is_file():
        assert render((folder / "network-config").read_text(), boot_context(template=meta))


@pytest.mark.parametrize("slug", OURS)
@pytest.mark.parametrize("net", [multi_nic_net(), ipv6_only_net(), make_net([ETH0], [])],
                         ids=["two-nics", "ipv6-only", "no-dns"])
def test_our_templates_render_other_networks(slug, net):
    meta = template_meta(slug)
    assert render_config(slug, net=net)
    if meta["boot"].get("install_cmdline"):
        line = render_cmdline(slug, net=net)
        assert "\n" not in line and "  " not in line
    if meta.get("seed") == "iso":
        assert yaml.safe_load(render_network_config(slug, net=net))["version"] == 2


# -- kickstart -----------------------------------------------------------------------------------
def parse_kickstart(text: str):
    handler = makeVersion(RHEL9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KickstartParser(handler).readKickstartFromString(text)
    # pykickstart only remarks that root has more than one key; anything else is a real problem.
    others = [w for w in caught if not (issubclass(w.category, KickstartParseWarning)
                                        and "ssh user with the name root" in str(w.message))]
    assert not others, [str(w.message) for w in others]
    return handler


@pytest.mark.parametrize("slug", KICKSTARTS)
def test_kickstart_parses_and_says_everything(slug):
    handler = parse_kickstart(render_config(slug))
    repo = SITE_SETTINGS["repo"]
    assert handler.url.url == repo
    appstream = repo.replace("/BaseOS/", "/AppStream/")
    assert [(r.name, r.baseurl) for r in handler.repo.repoList] == [("AppStream", appstream)]
    assert handler.displaymode.displayMode == ks_constants.DISPLAY_MODE_TEXT

    devices = [n for n in handler.network.network if n.device]
    assert len(devices) == 1
    eth0 = devices[0]
    assert (eth0.device, eth0.bootProto, eth0.ip, eth0.netmask, eth0.gateway) == \
        ("52:54:00:3a:7c:01", "static", "203.0.113.10", "255.255.255.0", "203.0.113.1")
    assert (eth0.ipv6, eth0.ipv6gateway) == ("2001:db8:0:1a::/64", "2001:db8::1")
    assert eth0.nameserver == "203.0.113.53,2001:db8::53"
    assert eth0.activate and eth0.onboot
    assert [n.hostname for n in handler.network.network if n.hostname] == ["web1.example.com"]

    assert (handler.rootpw.password, handler.rootpw.isCrypted) == (HASH, True)
    assert [(u.username, u.key) for u in handler.sshkey.sshUserList] == [("root", key) for key in KEYS]

    assert handler.ignoredisk.onlyuse == ["vda"] and handler.zerombr.zerombr
    assert handler.clearpart.type == ks_constants.CLEARPART_TYPE_ALL and handler.clearpart.initAll
    assert handler.autopart.autopart
    assert "console=ttyS0" in handler.bootloader.appendLine
    assert handler.timezone.timezone == "Etc/UTC"
    assert "core" in [g.name for g in handler.packages.groupList] and "curl" in handler.packages.packageList
    assert handler.reboot.action == ks_constants.KS_SHUTDOWN  # poweroff

    posts = [s for s in handler.scripts if s.type == ks_constants.KS_SCRIPT_POST]
    assert len(posts) == 1 and posts[0].logfile and posts[0].inChroot
    body = posts[0].script
    runner = body.index(f"echo {sample_context()['recipe_runner_b64']} | base64 -d >/root/panel-runner.sh")
    callback = body.index(f"echo {sample_context()['callback_b64']} | base64 -d >/root/panel-callback.sh")
    run_runner, run_callback = body.index("sh /root/panel-runner.sh"), body.index("sh /root/panel-callback.sh")
    assert runner < callback < run_runner < run_callback
    assert subprocess.run(["bash", "-n"], input=body, text=True).returncode == 0


@pytest.mark.parametrize("slug", KICKSTARTS)
def test_kickstart_further_addresses_and_nics(slug):
    handler = parse_kickstart(render_config(slug, net=multi_nic_net()))
    eth0, eth1 = [n for n in handler.network.network if n.device]
    assert (eth0.ip, eth0.gateway, eth0.ipv6) == ("203.0.113.10", "203.0.113.1", "2001:db8:0:1a::/64")
    # One default route: the private NIC's gateway is not used.
    assert (eth1.device, eth1.ip, eth1.netmask, eth1.gateway, eth1.noipv6, eth1.nameserver) == \
        ("52:54:00:3a:7c:02", "10.10.0.5", "255.255.0.0", "", True, "")
    posts = [s.script for s in handler.scripts if s.type == ks_constants.KS_SCRIPT_POST]
    assert len(posts) == 2 and "panel-runner.sh" in posts[-1]
    encoded = re.search(r"^echo (\S+) \| base64 -d >/usr/local/sbin/panel-extra-addresses$", posts[0], re.M).group(1)
    script = base64.b64decode(encoded).decode()
    assert "add 52:54:00:3a:7c:01 ipv4 203.0.113.11/24 || ok=0" in script
    assert "10.10.0.5" not in script and "203.0.113.10" not in script
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "systemctl enable panel-extra-addresses.service" in posts[0]
    # With one address per family and NIC there is nothing to add.
    assert "panel-extra-addresses" not in render_config(slug)


@pytest.mark.parametrize("slug", KICKSTARTS)
def test_kickstart_command_line(slug):
    words = render_cmdline(slug).split()
    assert f"inst.ks={CONFIG_URL}" in words and f"inst.repo={SITE_SETTINGS['repo']}" in words
    assert "ifname=bootnet:52:54:00:3a:7c:01" in words
    assert "ip=203.0.113.10::203.0.113.1:255.255.255.0:web1.example.com:bootnet:none" in words
    assert [w for w in words if w.startswith("nameserver=")] == [f"nameserver={d}" for d in DNS]
    assert "console=ttyS0,115200n8" in words
    six = render_cmdline(slug, net=ipv6_only_net()).split()
    assert "ip=[2001:db8:0:1a::]::[2001:db8::1]:64:web1.example.com:bootnet:none" in six
    no_gateway = make_net([{**ETH0, "ipv4": [{**ETH0["ipv4"][0], "gateway": ""}]}], DNS)
    assert "ip=203.0.113.10:::255.255.255.0:web1.example.com:bootnet:none" in render_cmdline(slug, net=no_gateway)


@pytest.mark.parametrize("slug", KICKSTARTS)
@pytest.mark.parametrize("word", HOSTILE_WORDS)
def test_kickstart_hostile_keys_stay_one_argument(slug, word):
    keys = [f"ssh-ed25519 AAAAC3Nz {word}", f"{word} ssh-rsa AAAAB3", KEYS[0]]
    handler = parse_kickstart(render_config(slug, ssh_keys=keys))
    assert [(u.username, u.key) for u in handler.sshkey.sshUserList] == [("root", key) for key in keys]
    assert len([s for s in handler.scripts if s.type == ks_constants.KS_SCRIPT_POST]) == 1
    assert handler.reboot.action == ks_constants.KS_SHUTDOWN


@pytest.mark.parametrize("slug", KICKSTARTS)
@pytest.mark.parametrize("brk", LINE_BREAKS, ids=repr)
def test_kickstart_refuses_a_key_that_spans_lines(slug, brk):
    with pytest.raises(RenderError, match="spans lines"):
        render_config(slug, ssh_keys=[KEYS[0], f"ssh-ed25519 AAAA x{brk}%post{brk}reboot{brk}%end"])


@pytest.mark.parametrize("slug", KICKSTARTS)
@pytest.mark.parametrize("hostname", HOSTILE_WORDS[:3] + ["web1\n%pre", "web1 --device=x"])
def test_kickstart_hostile_hostname_fails_to_render(slug, hostname):
    with pytest.raises(RenderError):
        render_config(slug, hostname=hostname)
    with pytest.raises(RenderError):
        render_cmdline(slug, hostname=hostname)


@pytest.mark.parametrize("slug", KICKSTARTS)
def test_kickstart_hostile_setting_fails_to_render(slug):
    meta = template_meta(slug)
    meta["settings"]["repo"] = "http://x/BaseOS/\n%pre\nreboot\n%end"
    with pytest.raises(RenderError):
        render((OS_CATALOG / slug / "ks.cfg").read_text(), sample_context(template=meta))
    with pytest.raises(RenderError):
        render(meta["boot"]["install_cmdline"], boot_context(template=meta))


# -- preseed -------------------------------------------------------------------------------------
def preseed_lines(text: str) -> list[str]:
    """The logical lines of a preseed file: comments and blanks dropped, continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.endswith("\\"):
            current += raw[:-1]
            continue
        lines.append(current + raw)
        current = ""
    assert not current
    return lines


def preseed_answers(text: str) -> dict[str, tuple[str, str, str]]:
    answers = {}
    for line in preseed_lines(text):
        owner, question, kind, *value = line.split(None, 3)
        assert owner in {"d-i", "tasksel", "popularity-contest"}, line
        assert kind in {"string", "boolean", "select", "multiselect", "password", "note"}, line
        assert question not in answers, f"{question} answered twice"
        answers[question] = (owner, kind, value[0] if value else "")
    return answers


def late_parts(late_command: str) -> tuple[dict[str, str], list[str]]:
    """The base64 files the late command writes into /target, decoded, and its commands."""
    files = {name: base64.b64decode(data).decode()
             for data, name in re.findall(r"echo ([A-Za-z0-9+/=]+) >/target/root/panel-(\w+)\.b64", late_command)}
    return files, [c.strip() for c in late_command.split(";")]


@pytest.mark.parametrize("slug", PRESEEDS)
def test_preseed_says_everything(slug):
    answers = preseed_answers(render_config(slug))
    assert answers["passwd/root-password-crypted"] == ("d-i", "password", HASH)
    assert answers["passwd/root-login"][2] == "true" and answers["passwd/make-user"][2] == "false"
    assert answers["mirror/http/hostname"][2] == SITE_SETTINGS["mirror"]
    assert answers["mirror/http/directory"][2] == "/debian"
    assert answers["partman-auto/disk"][2] == "/dev/vda"
    assert answers["partman-auto/choose_recipe"][2] == "atomic"
    assert answers["grub-installer/bootdev"][2] == "/dev/vda"
    assert set(answers["pkgsel/include"][2].split()) >= {"curl", "openssh-server"}
    assert answers["debian-installer/exit/poweroff"][2] == "true"

    files, commands = late_parts(answers["preseed/late_command"][2])
    assert files["runner"] == RUNNER and files["callback"] == CALLBACK
    ran = [c for c in commands if c.startswith("in-target sh /root/")]
    assert ran == ["in-target sh /root/panel-late.sh </dev/null", "in-target sh /root/panel-runner.sh </dev/null",
                   "in-target sh /root/panel-callback.sh </dev/null"]
    late = files["late"]
    assert late.startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n"], input=late, text=True).returncode == 0
    assert "echo 'nameserver 203.0.113.53' >>/etc/resolv.conf" in late
    assert "echo 'nameserver 2001:db8::53' >>/etc/resolv.conf" in late
    # eth0's IPv4 is netcfg's (kernel command line); its IPv6 and the default route are added.
    assert "203.0.113.10" not in late
    assert "inet6 static" in late and "2001:db8:0:1a::/64" in late
    assert "default via %s dev %s onlink" in late and "2001:db8::1" in late


@pytest.mark.parametrize("slug", PRESEEDS)
def test_preseed_further_addresses_and_nics(slug):
    answers = preseed_answers(render_config(slug, net=multi_nic_net()))
    late = late_parts(answers["preseed/late_command"][2])[0]["late"]
    assert subprocess.run(["sh", "-n"], input=late, text=True).returncode == 0
    assert "nic 52:54:00:3a:7c:01" in late and "nic 52:54:00:3a:7c:02" in late
    assert "203.0.113.11/24" in late and "10.10.0.5/16" in late
    assert "10.10.0.1" not in late, "one default route: the private NIC's gateway is not used"
    assert late.count("allow-hotplug") == 1


@pytest.mark.parametrize("slug", PRESEEDS)
def test_preseed_command_line(slug):
    words = render_cmdline(slug).split()
    for word in (f"url={CONFIG_URL}", "auto=true", "priority=critical", "interface=52:54:00:3a:7c:01",
                 "netcfg/disable_autoconfig=true", "netcfg/get_ipaddress=203.0.113.10",
                 "netcfg/get_netmask=255.255.255.0", "netcfg/get_gateway=203.0.113.1",
                 "netcfg/get_nameservers=203.0.113.53", "netcfg/confirm_static=true", "hostname=web1",
                 "domain=example.com", "console=ttyS0,115200n8"):
        assert word in words, word
    six = render_cmdline(slug, net=ipv6_only_net()).split()
    assert "netcfg/get_ipaddress=2001:db8:0:1a::/64" in six and "netcfg/get_gateway=2001:db8::1" in six
    assert not [w for w in six if w.startswith("netcfg/get_netmask")]
    no_gateway = make_net([{**ETH0, "ipv4": [{**ETH0["ipv4"][0], "gateway": ""}]}], DNS)
    assert "netcfg/get_gateway=none" in render_cmdline(slug, net=no_gateway).split()


def write_keys_with_late_script(late: str, tmp_path: Path) -> str:
    """Run the late script's SSH-key part with /root/.ssh moved to tmp_path; the file it writes."""
    part = late[:late.index("chmod 600 /root/.ssh/authorized_keys")]
    part = part.replace("/root/.ssh", str(tmp_path / "ssh"))
    subprocess.run(["sh", "-eu"], input=part, text=True, check=True)
    return (tmp_path / "ssh" / "authorized_keys").read_text()


@pytest.mark.parametrize("slug", PRESEEDS)
@pytest.mark.parametrize("word", HOSTILE_WORDS)
def test_preseed_hostile_keys_stay_one_word(slug, word, tmp_path):
    keys = [f"ssh-ed25519 AAAAC3Nz {word}", f"{word} ssh-rsa AAAAB3", KEYS[1]]
    answers = preseed_answers(render_config(slug, ssh_keys=keys))
    late = late_parts(answers["preseed/late_command"][2])[0]["late"]
    for key, line in zip(keys, [ln for ln in late.splitlines() if ln.startswith("printf '%s\\n' ")], strict=True):
        assert shlex.split(line) == ["printf", "%s\\n", key, ">>/root/.ssh/authorized_keys"]
    assert write_keys_with_late_script(late, tmp_path) == "".join(f"{key}\n" for key in keys)


@pytest.mark.parametrize("slug", PRESEEDS)
@pytest.mark.parametrize("brk", LINE_BREAKS, ids=repr)
def test_preseed_refuses_a_key_that_spans_lines(slug, brk):
    with pytest.raises(RenderError, match="spans lines"):
        render_config(slug, ssh_keys=[f"ssh-ed25519 AAAA x{brk}d-i preseed/late_command string reboot"])


@pytest.mark.parametrize("slug", PRESEEDS)
@pytest.mark.parametrize("hostname", HOSTILE_WORDS[:3] + ["web1\nd-i preseed/early_command string reboot",
                                                          "web1 preseed/url=http://evil/"])
def test_preseed_hostile_hostname_fails_to_render(slug, hostname):
    with pytest.raises(RenderError):
        render_cmdline(slug, hostname=hostname)


@pytest.mark.parametrize("slug", PRESEEDS)
def test_preseed_hostile_setting_fails_to_render(slug):
    meta = template_meta(slug)
    meta["settings"]["mirror"] = "deb.example.net\nd-i preseed/late_command string reboot"
    with pytest.raises(RenderError):
        render((OS_CATALOG / slug / "preseed.cfg").read_text(), sample_context(template=meta))


# -- cloud-init ----------------------------------------------------------------------------------
def user_data(slug: str, **overrides) -> dict:
    text = render_config(slug, **overrides)
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


@pytest.mark.parametrize("slug", CLOUD_IMAGES)
def test_user_data_says_everything(slug):
    data = user_data(slug)
    assert (data["hostname"], data["fqdn"]) == ("web1", "web1.example.com")
    assert data["chpasswd"] == {"expire": False, "users": [{"name": "root", "password": HASH, "type": "hash"}]}
    assert data["disable_root"] is False and data["ssh_pwauth"] is True and data["users"] == []
    assert data["ssh_authorized_keys"] == KEYS
    assert data["package_update"] is True and "curl" in data["packages"]
    files = {f["path"]: f for f in data["write_files"]}
    runner, callback = files["/root/panel-runner.sh"], files["/root/panel-callback.sh"]
    assert runner["encoding"] == callback["encoding"] == "b64"
    assert base64.b64decode(runner["content"]).decode() == RUNNER
    assert base64.b64decode(callback["content"]).decode() == CALLBACK
    assert data["runcmd"][:2] == [["sh", "/root/panel-runner.sh"], ["sh", "/root/panel-callback.sh"]]
    assert "power_state" not in data


@pytest.mark.parametrize("slug", CLOUD_IMAGES)
def test_network_config(slug):
    config = yaml.safe_load(render_network_config(slug))
    assert config["version"] == 2
    eth0 = config["ethernets"]["eth0"]
    assert eth0["match"] == {"macaddress": "52:54:00:3a:7c:01"}
    assert eth0["addresses"] == ["203.0.113.10/24", "2001:db8:0:1a::/64"]
    assert {"to": "default", "via": "203.0.113.1"} in eth0["routes"]
    assert {"to": "default", "via": "2001:db8::1", "on-link": True} in eth0["routes"]
    assert eth0["nameservers"] == {"addresses": DNS}

    two = yaml.safe_load(render_network_config(slug, net=multi_nic_net()))["ethernets"]
    assert two["eth0"]["addresses"] == ["203.0.113.10/24", "203.0.113.11/24", "2001:db8:0:1a::/64"]
    assert two["eth1"] == {"match": {"macaddress": "52:54:00:3a:7c:02"}, "dhcp4": False, "dhcp6": False,
                           "accept-ra": False, "addresses": ["10.10.0.5/16"]}
    # A MAC of digits only stays a string (YAML 1.1 would read 52:54:00:12:34:56 as a number).
    digits = make_net([{**ETH0, "mac": "52:54:00:12:34:56"}], DNS)
    assert yaml.safe_load(render_network_config(slug, net=digits))["ethernets"]["eth0"]["match"]["macaddress"] == \
        "52:54:00:12:34:56"


@pytest.mark.parametrize("slug", CLOUD_IMAGES)
@pytest.mark.parametrize("hostile", HOSTILE_WORDS + [f"x{brk}runcmd: [reboot]" for brk in LINE_BREAKS]
                         + ['x"\nruncmd: [reboot]\nx: "', "x: y", "- x", "&a x", "!!python/object x"])
def test_user_data_hostile_values_stay_values(slug, hostile):
    keys = [f"ssh-ed25519 AAAA {hostile}", KEYS[0]]
    data = user_data(slug, hostname=f"web1{hostile}", ssh_keys=keys)
    assert data["fqdn"] == f"web1{hostile}" and data["ssh_authorized_keys"] == keys
    assert set(data) == set(user_data(slug))
    assert data["runcmd"] == user_data(slug)["runcmd"]


@pytest.mark.parametrize("slug", CLOUD_IMAGES)
def test_user_data_keeps_a_key_comment_outside_the_bmp(slug):
    keys = ["ssh-ed25519 AAAAC3Nz alice \U0001F511"]
    assert user_data(slug, ssh_keys=keys)["ssh_authorized_keys"] == keys


# -- recipes -------------------------------------------------------------------------------------
def load_recipe(slug: str) -> dict:
    return tomllib.loads((RECIPE_CATALOG / f"{slug}.toml").read_text())


def test_the_shipped_recipes():
    assert set(RECIPES) >= {"nginx", "docker", "lamp", "marker"}
    assert load_recipe("marker")["os_families"] == ["tiny", "rhel", "debian", "ubuntu"]
    for slug in ("nginx", "docker", "lamp"):
        assert set(load_recipe(slug)["os_families"]) == {"rhel", "debian", "ubuntu"}


@pytest.mark.parametrize("slug", RECIPES)
def test_recipe_definition(slug):
    from recipes.models import normalize_parameters

    recipe = load_recipe(slug)
    assert set(recipe) <= {"name", "description", "os_families", "parameters", "script"}
    assert isinstance(recipe["name"], str) and recipe["name"]
    assert isinstance(recipe["description"], str) and recipe["description"]
    assert recipe["os_families"] and set(recipe["os_families"]) <= {"rhel", "debian", "ubuntu", "tiny"}
    for param in recipe.get("parameters", []):
        assert set(param) == {"name", "label", "required", "default", "secret"}
        assert isinstance(param["secret"], bool) and not (param["secret"] and param["default"])
        assert re.fullmatch(r"[a-z][a-z0-9_]*", param["name"])
        assert isinstance(param["label"], str) and param["label"]
        assert isinstance(param["required"], bool) and isinstance(param["default"], str)
        assert param["name"].upper() in recipe["script"], "the script reads its parameter"
    assert normalize_parameters(recipe.get("parameters", [])) == recipe.get("parameters", [])
    assert recipe["script"].startswith("#!")
    assert "set -eu" in recipe["script"]


@pytest.mark.parametrize("slug", RECIPES)
def test_recipe_script_syntax(slug, tmp_path):
    script = load_recipe(slug)["script"]
    path = tmp_path / "recipe"
    path.write_text(script)
    shells = [["bash", "-n"]] if script.startswith("#!/bin/bash") else [["sh", "-n"], ["bash", "-n"]]
    if "tiny" in load_recipe(slug)["os_families"]:
        assert script.startswith("#!/bin/sh\n"), "the tiny OS has busybox sh only"
        if shutil.which("busybox"):
            shells.append(["busybox", "sh", "-n"])
    for shell in shells:
        result = subprocess.run([*shell, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, (shell, result.stderr)


def run_recipe(slug: str, tmp_path: Path, shell: list[str] | None = None, **env) -> subprocess.CompletedProcess:
    """Run a recipe with no package manager on PATH: it may only check its parameters and give up."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    path = tmp_path / f"{slug}.sh"
    path.write_text(load_recipe(slug)["script"])
    return subprocess.run([*(shell or ["/bin/sh"]), str(path)], env={"PATH": str(empty), **env},
                          capture_output=True, text=True)


@pytest.mark.parametrize("slug, env", [
    ("nginx", {"SERVER_NAME": "example.com; rm -rf /"}),
    ("nginx", {"SERVER_NAME": "example.com\nlisten 8080"}),
    ("docker", {"COMPOSE": "maybe"}),
    ("lamp", {"DB_PASSWORD": "secret", "DB_NAME": "app; DROP DATABASE mysql"}),
])
def test_recipe_refuses_bad_parameters(slug, env, tmp_path):
    assert run_recipe(slug, tmp_path, **env).returncode == 2


@pytest.mark.parametrize("slug, env", [
    ("nginx", {}), ("nginx", {"SERVER_NAME": "example.com www.example.com"}),
    ("docker", {"COMPOSE": "yes"}), ("lamp", {"DB_PASSWORD": "it's \"secret\" $x"}),
])
def test_recipe_takes_good_parameters(slug, env, tmp_path):
    result = run_recipe(slug, tmp_path, **env)
    assert result.returncode == 1 and "neither apt-get nor dnf" in result.stderr


def test_lamp_needs_its_password(tmp_path):
    result = run_recipe("lamp", tmp_path)
    assert result.returncode != 0 and "db_password" in result.stderr


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]], ids=["sh", "busybox"])
def test_marker_writes_and_prints_its_text(shell, tmp_path):
    if not shutil.which(shell[0]):
        pytest.skip(f"no {shell[0]}")
    script = load_recipe("marker")["script"].replace("/srv", str(tmp_path / "srv"))
    text = "hello $(reboot) `reboot` 'quoted' \"double\""
    result = subprocess.run([*shell, "-s"], input=script, env={"PATH": "/usr/bin:/bin", "TEXT": text},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "\n"
    assert (tmp_path / "srv" / "panel-marker").read_text() == text + "\n"
    missing = subprocess.run([*shell, "-s"], input=script, env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "text parameter is required" in missing.stderr
