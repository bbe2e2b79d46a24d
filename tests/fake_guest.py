"""A stand-in for a guest's installer on the fake driver (unit tests only).

When the fake driver starts a domain that boots an installer, this does what the real tiny
guest does on a real node: fetch the one-time config from one of the server's addresses and
call back. The end-to-end tests do it for real (tests/e2e/test_provisioning.py).
"""

import re

from templates_os import provisioning
from templates_os.seed import read_seed

# The config URL, whatever the installer's option is called (panel.config=, inst.ks=, url=).
CONFIG_ARG = re.compile(r"=(https?://\S+/provision/[^/\s]+/)")


def config_url_of(spec, uploads: dict) -> str | None:
    if spec.kernel_boot:
        found = CONFIG_ARG.search(spec.kernel_boot.cmdline)
        if found:
            return found.group(1)
    for disk in spec.disks:
        # A seed is a volume the panel uploaded; an ISO of the library is not one.
        if disk.device == "cdrom" and disk.path.rsplit("/", 1)[1] in uploads:
            user_data = read_seed(uploads[disk.path.rsplit("/", 1)[1]])["user-data"].split("\n")
            # Only an install's seed includes a config URL; a clone's (#cloud-config) has none.
            return user_data[1] if user_data[0] == "#include" else None
    return None


def install(spec, uploads: dict, exit_code: int = 0, output: str = "recipe ran\n") -> None:
    from panel.ipam.models import IpAddress
    from templates_os.models import Installation

    url = config_url_of(spec, uploads)
    if url is None:
        return
    token = url.rstrip("/").rsplit("/", 1)[1]
    address = IpAddress.objects.filter(server_id=spec.server_id).values_list("address", flat=True).first()
    if address is None:
        # No address: a real guest could not reach the panel at all; the fake one still
        # completes, so tests about other things can have servers without networks.
        Installation.objects.filter(config_token=provisioning._hash(token)).update(
            status=Installation.Status.DONE, recipe_exit_code=exit_code, recipe_output=output,
            config_token=None, callback_token=None)
        return
    served = provisioning.serve_config(token, address, url)
    provisioning.record_callback(provisioning._callback_token(token), address, exit_code, output)
    return served
