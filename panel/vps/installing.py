"""Installing a server's OS: the create and reinstall jobs.

The template's installer boots with a one-time config URL; the guest fetches its config and
calls back (templates_os/provisioning.py); then the installed system boots. The server's
addresses stay what they are. A failed install leaves the server in `error` (`fail_install`).
"""

import time

from django.conf import settings

from nodes.driver import DomainState, Driver, DriverError
from panel.events import emit
from panel.images.models import Snapshot
from panel.runner import Step, for_customer
from panel.vps.domain import InstallBoot, disk_path, domain_spec
from panel.vps.models import Operation, ServerState, VirtualServer
from templates_os import provisioning
from templates_os.models import Installation
from templates_os.seed import seed_iso


def create(step: Step, server: VirtualServer, driver: Driver) -> None:
    step(10, f"preparing storage {server.storage.name} on the node", customer="preparing the disk")
    driver.ensure_pool(server.storage.pool_name, server.storage.path)
    install(step, server, driver)


def reinstall(step: Step, server: VirtualServer, driver: Driver) -> None:
    step(10, "powering off and removing the old disk", customer=True)
    driver.destroy(server.domain_name)
    driver.delete_volume(server.storage.pool_name, server.disk_volume)
    driver.delete_volume(server.storage.pool_name, server.seed_volume)
    Snapshot.discard_all(server, driver)  # overlays of the old disk
    driver.drop_checkpoints(server.domain_name, metadata_only=True)  # their bitmaps were on that disk
    driver.ensure_pool(server.storage.pool_name, server.storage.path)
    install(step, server, driver)


def install(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Boot the template's installer with a one-time config URL, wait for the call-back, then
    boot the installed system."""
    installation = Installation.objects.select_related("template", "recipe").get(operation=step.op)
    template = installation.template
    if template is None or not template.valid:
        raise for_customer(DriverError("the OS template is no longer available"))
    token = provisioning.begin(installation)
    url = provisioning.config_url(server, token)
    seed = ""
    if template.metadata.get("seed") == "iso":
        step(20, "writing the cloud-init seed", customer=True)
        seed = driver.upload_volume(server.storage.pool_name, server.seed_volume,
                                    seed_iso(provisioning.seed_files(server, installation, url)))
    what = "an overlay of the template's image" if template.boot.get("image") else "empty"
    step(30, f"creating a {server.disk_gib} GiB disk ({what})", customer=True)
    disk = disk_path(server, driver)
    spec = domain_spec(server, disk, install=InstallBoot(url, seed))
    panel_at = url.split("/provision/")[0]
    step(40, f"booting the {template.name} installer ({spec.virt_type}); it fetches its config from {panel_at}",
         customer=f"booting the {template.name} installer")
    if not spec.nics:
        step(41, "warning: the server has no network card, so its installer cannot reach the panel "
                 "(give its cluster a network with an IP pool)")
    try:
        driver.define(spec)
        driver.start(server.domain_name)
    except DriverError:
        # A failed boot leaves nothing behind on the node.
        driver.undefine(server.domain_name)
        driver.delete_volume(server.storage.pool_name, server.disk_volume)
        driver.delete_volume(server.storage.pool_name, server.seed_volume)
        raise
    server.set_state(ServerState.INSTALLING)
    installation = _wait_for_callback(step, server, driver, installation)
    code = installation.recipe_exit_code
    recipe = f"; recipe {installation.recipe.slug} exited with {code}" if installation.recipe else ""
    step(85, f"install complete{recipe}", customer=True)
    installed = domain_spec(server, disk)
    if spec.kernel_boot and not installed.kernel_boot:
        step(88, "waiting for the installer to power off, then booting from disk", customer=True)
        if driver.stop(server.domain_name, settings.STOP_TIMEOUT_SECONDS * 5, step.heartbeat):
            step(89, "the installer did not power off; forced", customer=True)
        driver.define(installed)
        driver.start(server.domain_name)
    else:
        driver.define(installed)  # the next boot leaves out the installer's arguments and seed
    server.set_state(ServerState.RUNNING, error="")
    emit("server.active", customer_id=server.customer_id, server=server.id, hostname=server.hostname,
         os_template=template.slug, recipe=installation.recipe.slug if installation.recipe else None,
         recipe_exit_code=code)


def _wait_for_callback(step: Step, server: VirtualServer, driver: Driver, installation: Installation) -> Installation:
    timeout = installation.template.install_timeout
    started, said_fetched, checked = time.monotonic(), False, 0.0
    while True:
        installation.refresh_from_db()
        elapsed = time.monotonic() - started
        if installation.config_served_at and not said_fetched:
            said_fetched = True
            step(55, f"the installer fetched its config from {installation.config_served_to}; installing",
                 customer="the installer fetched its config; installing")
        if installation.status == Installation.Status.DONE:
            return installation
        if elapsed - checked >= 5:
            checked = elapsed
            if driver.state(server.domain_name) != DomainState.RUNNING:
                raise for_customer(DriverError("the installer stopped without calling back" +
                                               ("" if said_fetched else " (it never fetched its config)")))
        if elapsed > timeout:
            late = f"no call-back from the installer within {timeout} s"
            raise for_customer(DriverError(late + ("" if said_fetched else "; it never fetched its config (can it "
                                                                          "reach the panel?)")),
                               late + ("" if said_fetched else "; it never fetched its config"))
        step.op.progress = min(80, 55 + int(25 * elapsed / timeout)) if said_fetched else 45
        step.heartbeat()
        time.sleep(0.25)  # one indexed row read: the call-back is noticed within a quarter second


def fail_install(op: Operation, server: VirtualServer, driver: Driver) -> None:
    """A failed install is an error whatever the domain does: its installer is powered off and
    its disk kept to look at; the customer can reinstall or delete."""
    Installation.objects.filter(operation=op).exclude(status=Installation.Status.DONE).update(
        status=Installation.Status.FAILED, config_token=None, callback_token=None)
    try:
        driver.destroy(server.domain_name)
    except DriverError:
        pass
    server.set_state(ServerState.ERROR)
