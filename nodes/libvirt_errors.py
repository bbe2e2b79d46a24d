"""How the drivers report failures, and how libvirt's errors map onto them."""


class DriverError(Exception):
    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def is_missing(exc) -> bool:
    import libvirt

    return exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL)


def is_connection_error(exc) -> bool:
    import libvirt

    if exc.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT):
        return True
    # A kept qemu+ssh connection whose node went away (and came back) says only this.
    return exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and "client socket is closed" in str(exc)


def reconnecting(method):
    """Run a driver method; if the kept connection turns out dead (the node's libvirtd was
    restarted, the SSH link dropped), open a new one and try once more."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except DriverError as exc:
            if not exc.retryable:
                raise
        except self._libvirt.libvirtError as exc:
            if not is_connection_error(exc):
                raise DriverError(f"{method.__name__}: {exc}") from exc
        self.close()
        try:
            return method(self, *args, **kwargs)
        except self._libvirt.libvirtError as exc:
            raise DriverError(f"{method.__name__}: {exc}", retryable=is_connection_error(exc)) from exc

    return wrapper
