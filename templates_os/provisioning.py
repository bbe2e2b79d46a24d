"""Installing an OS on a server: what its install config says, and the two one-time URLs.

The worker starts an install with `begin()`: a fresh config token (in the installer's command
line or seed) replaces any earlier one. The guest fetches its config once, from one of the
server's own addresses (`serve_config`); the config ends by calling back (`record_callback`),
which is how the panel learns the install is complete. Tokens are stored only as SHA-256
hashes; the call-back token is derived from the config token, so the panel never keeps it.
"""

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from passlib.hash import sha512_crypt

from panel.crypto import decrypt, encrypt
from panel.ipam.addressing import server_nics
from recipes import sealing
from recipes.runner import OUTPUT_LIMIT, callback_script, runner_script
from templates_os import render
from templates_os.models import Installation, OsTemplate

# What the seed's user-data #include line may hold: printable ASCII without spaces.
SEED_URL = re.compile(r"https?://[\x21-\x7e]+")
SSH_KEY = re.compile(r"(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
                     r"@openssh\.com) [A-Za-z0-9+/]+={0,3}( [\x20-\x7e]{0,200})?")  # a comment: printable ASCII only


def generate_password() -> str:
    """A root password for a customer who gave none: 16 characters, no look-alikes."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(16))


def hash_password(password: str) -> str:
    """SHA-512 crypt, what kickstart, preseed and cloud-init all accept."""
    return sha512_crypt.using(rounds=5000).hash(password)


def check_ssh_keys(keys) -> list[str]:
    """The keys, stripped; ValueError names the first one that is not a single OpenSSH public key."""
    if not isinstance(keys, list) or len(keys) > 20:
        raise ValueError(_("A list of at most 20 SSH public keys."))
    result = []
    for key in keys:
        key = str(key).strip()
        if not SSH_KEY.fullmatch(key):
            raise ValueError(_("Not an OpenSSH public key: %(key)s") % {"key": key[:40]})
        result.append(key)
    return result


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _callback_token(config_token: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), b"callback:" + config_token.encode(), "sha256").hexdigest()


def begin(installation: Installation) -> str:
    """Issue the install's config token (a retry replaces the earlier one)."""
    token = secrets.token_urlsafe(32)
    installation.config_token = _hash(token)
    installation.callback_token = _hash(_callback_token(token))
    installation.status = Installation.Status.WAITING
    installation.config_served_at = installation.finished_at = installation.recipe_exit_code = None
    installation.recipe_output = ""
    installation.save()
    return token


def base_url(server) -> str:
    """How the server's guest reaches the panel: PROVISION_URL, else this host's own address
    on the way to the server's node (or to its NAT gateway, on the panel's own host)."""
    if settings.PROVISION_URL:
        return settings.PROVISION_URL
    target = server.node.address or _first_gateway(server) or "127.0.0.1"
    return f"http://{source_address(target) or '127.0.0.1'}:{settings.PANEL_PORT}"


def source_address(target: str) -> str | None:
    """This host's IPv4 address on the way to `target`, or None when there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((target, 9))  # no packet is sent: this only picks the source address
            return s.getsockname()[0]
        except OSError:
            return None


def _first_gateway(server) -> str:
    from panel.ipam.models import IpAddress

    address = IpAddress.objects.filter(server=server, pool__gateway__gt="").select_related("pool").first()
    return address.pool.gateway if address and address.version == 4 else ""


def config_url(server, token: str) -> str:
    return f"{base_url(server)}/provision/{token}/"


# -- the config's context ------------------------------------------------------------------------
def net_context(server) -> dict:
    """The server's NICs and addresses as install configs want them, and as the demo guest's
    kernel arguments (`panel.ip=<dev>,<address/prefix>,<gateway>` and `panel.dns=`)."""
    nics, dns = server_nics(server)
    interfaces, panel_args = [], []
    for nic in nics:
        entry = {"name": nic.name, "mac": nic.mac, "ipv4": [], "ipv6": []}
        for given in nic.addresses:
            address = given.address
            net = ipaddress.ip_network(address.pool.cidr, strict=False)
            item = {"address": address.address, "prefix": net.prefixlen, "gateway": given.gateway}
            if address.version == 4:
                item["netmask"] = str(net.netmask)
            entry[f"ipv{address.version}"].append(item)
            panel_args.append(f"panel.ip={nic.name},{address.with_prefix},{given.gateway}")
        interfaces.append(entry)
    if dns:
        panel_args.append("panel.dns=" + ",".join(dns))
    return _net(interfaces, dns, " ".join(panel_args))


def _net(interfaces: list[dict], dns: list[str], panel_args: str) -> dict:
    def first(version):
        for entry in interfaces:
            if entry[version]:
                return {**entry[version][0], "mac": entry["mac"], "interface": entry["name"]}
        return None

    return {"interfaces": interfaces, "ipv4": first("ipv4"), "ipv6": first("ipv6"), "dns": dns,
            "panel_args": render.Trusted(panel_args)}


def _context(*, hostname, password_hash, ssh_keys, net, recipe, params, template_meta, server_uuid,
             config_url_, callback_url) -> dict:
    runner = runner_script(recipe, params)
    return {
        "hostname": hostname,
        "root_password_hash": render.Trusted(password_hash),
        "ssh_keys": list(ssh_keys),
        "net": net,
        "recipe": {"name": recipe.name, "slug": recipe.slug} if recipe else None,
        "recipe_runner_b64": render.Trusted(base64.b64encode(runner.encode()).decode()),
        "callback_b64": render.Trusted(base64.b64encode(callback_script(callback_url).encode()).decode()),
        "config_url": render.Trusted(config_url_),
        "callback_url": render.Trusted(callback_url),
        "template": template_meta,
        "server_uuid": server_uuid,
    }


def sample_context(meta: dict) -> dict:
    """A realistic context, for checking a template when the share is scanned."""
    interfaces = [{"name": "eth0", "mac": "52:54:00:12:34:56",
                   "ipv4": [{"address": "192.0.2.10", "prefix": 24, "netmask": "255.255.255.0", "gateway": "192.0.2.1"}],
                   "ipv6": [{"address": "2001:db8::10", "prefix": 64, "gateway": "2001:db8::1"}]}]
    return _context(hostname="sample.example.com", password_hash=hash_password("sample"),
                    ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq8bT2s sample@example"],
                    net=_net(interfaces, ["192.0.2.53"], "panel.ip=eth0,192.0.2.10/24,192.0.2.1"),
                    recipe=None, params={}, template_meta=meta, server_uuid="00000000-0000-0000-0000-000000000000",
                    config_url_="http://panel.example/provision/TOKEN/",
                    callback_url="http://panel.example/provision/CALLBACK/done")


def context_for(installation: Installation, config_url_: str, config_token: str) -> dict:
    server = installation.server
    callback = config_url_.rstrip("/").rsplit("/", 1)[0] + f"/{_callback_token(config_token)}/done"
    return _context(hostname=server.hostname, password_hash=decrypt(installation.password_hash),
                    ssh_keys=installation.ssh_keys, net=net_context(server), recipe=installation.recipe,
                    params=sealing.unseal(installation.recipe_params), template_meta=installation.template.metadata,
                    server_uuid=str(server.uuid), config_url_=config_url_, callback_url=callback)


def render_file(template: OsTemplate, name: str, context: dict) -> str:
    return render.render(template.file_path(name).read_text(), context)


def render_cmdline(template: OsTemplate, key: str, context: dict) -> str:
    line = render.render(template.boot.get(key, ""), context)
    return " ".join(line.split())


# -- what the guest calls --------------------------------------------------------------------------
class NotFound(Exception):
    """Unknown or used token, or a caller that is not the server: the view answers 404."""


@dataclass
class Served:
    installation: Installation
    text: str


def _server_addresses(server) -> set[str]:
    """Where the server's requests come from: its own addresses, and its node's address when it
    sits on a NAT network (the node masquerades what it sends to the panel)."""
    from nodes.models import Network
    from panel.ipam.models import IpAddress

    addresses = {str(ipaddress.ip_address(a)) for a in
                 IpAddress.objects.filter(server=server).values_list("address", flat=True)}
    if server.node.address and server.nics.filter(network__kind=Network.Kind.NAT).exists():
        addresses.add(server.node.address)
    return addresses


def _caller_is_server(server, remote: str) -> bool:
    try:
        remote = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if remote.version == 6 and remote.ipv4_mapped:
        remote = remote.ipv4_mapped
    return str(remote) in _server_addresses(server)


def serve_config(token: str, remote: str, url: str) -> Served:
    """The install config for `token`, once, and only to the server's own address."""
    with transaction.atomic():
        installation = (Installation.objects.select_for_update()
                        .select_related("server", "server__node", "template", "recipe")
                        .filter(config_token=_hash(token), status=Installation.Status.WAITING).first())
        if installation is None or installation.template is None or \
                not _caller_is_server(installation.server, remote):
            raise NotFound()
        context = context_for(installation, url, token)
        text = render_file(installation.template, installation.template.metadata["config"], context)
        installation.status = Installation.Status.CONFIG_SERVED
        installation.config_served_at = timezone.now()
        installation.config_served_to = remote
        installation.save(update_fields=["status", "config_served_at", "config_served_to"])
    return Served(installation, text)


def record_callback(token: str, remote: str, exit_code: int | None, output: str) -> Installation:
    """The guest says the install is complete; the worker waiting for it goes on."""
    with transaction.atomic():
        installation = (Installation.objects.select_for_update().select_related("server", "server__node")
                        .filter(callback_token=_hash(token), status=Installation.Status.CONFIG_SERVED).first())
        if installation is None or not _caller_is_server(installation.server, remote):
            raise NotFound()
        installation.status = Installation.Status.DONE
        installation.finished_at = timezone.now()
        installation.recipe_exit_code = exit_code
        installation.recipe_output = output[-OUTPUT_LIMIT:]
        installation.config_token = installation.callback_token = None
        installation.save()
    return installation


def new_installation(server, template: OsTemplate, recipe, params: dict, password: str, ssh_keys: list[str],
                     operation=None) -> Installation:
    return Installation.objects.create(
        server=server, operation=operation, template=template, recipe=recipe,
        recipe_params=sealing.seal(recipe, params),  # secret parameters encrypted
        password_hash=encrypt(hash_password(password)) if password else "", ssh_keys=ssh_keys)


def boot_context(server, config_url_: str) -> dict:
    """What a kernel command line may use: no secrets (the domain XML is readable on the node)."""
    return _context(hostname=server.hostname, password_hash="", ssh_keys=[], net=net_context(server), recipe=None,
                    params={}, template_meta=server.os_template.metadata, server_uuid=str(server.uuid),
                    config_url_=config_url_, callback_url="")


def seed_files(server, installation: Installation, url: str) -> dict[str, str]:
    """A NoCloud seed: meta-data and network settings, and user-data that includes the one-time
    URL, so the password hash and keys never sit on the node's disk."""
    template = installation.template
    if not SEED_URL.fullmatch(url):
        # One line of user-data: a URL with a line break would add lines of its own.
        raise ValueError(f"the config URL {url[:60]!r} is not a single http(s) URL")
    # Each value a YAML scalar whatever it holds: a hostname that slipped past validation
    # (one with a line break) stays the value of local-hostname, not a key of its own.
    meta = {"instance-id": f"{server.uuid}-{installation.pk}",  # new per install: cloud-init runs again
            "local-hostname": server.hostname}
    files = {
        "meta-data": "".join(f"{key}: {render.yaml_scalar(value)}\n" for key, value in meta.items()),
        "user-data": f"#include\n{url}\n",
    }
    if template.file_path("network-config").is_file():
        files["network-config"] = render_file(template, "network-config", boot_context(server, url))
    return files
