"""`alignkit serve`: run the app on uvicorn, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
from collections.abc import Sequence

from alignkit.errors import UserError
from alignkit.web.app import ServeSettings, create_app

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
WILDCARDS = ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names the server answers to: the loopback names, the address it listens
    on, and for a wildcard address this machine's own names and addresses, plus ``extra``
    (``--allow-host``: the name people reach it by). Any other Host is a 400, so a page
    elsewhere whose name is made to point at this machine (DNS rebinding) reads nothing."""
    names = [*LOOPBACK_NAMES]
    if host in WILDCARDS:
        machine = socket.gethostname()
        names += [machine, socket.getfqdn()]
        with contextlib.suppress(OSError):  # a machine whose own name does not resolve
            names += [info[4][0] for info in socket.getaddrinfo(machine, None)]
    else:
        names.append(host)
    names += list(extra)
    return sorted({n for n in names if n and ":" not in n} | {n for n in extra})


def exposure_warning(host: str) -> str | None:
    """What a user serving beyond this machine should know, or None for a loopback host."""
    if _is_loopback(host):
        return None
    return (
        f"alignkit serve: warning: listening on {host or '*'} over plain HTTP: anyone who can "
        "reach this machine can read the runs dashboard and use the playground, and "
        "annotators' tokens travel unencrypted. For use beyond this machine put it behind "
        "HTTPS (a reverse proxy) and name the host people use with --allow-host."
    )


def serve(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_hosts: Sequence[str] = (),
) -> None:
    """Serve until interrupted; a port in use is the user's to fix, so it is one line."""
    import uvicorn

    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    settings.allowed_hosts = tuple(allowed_hosts(host, allow_hosts))
    app = create_app(settings)
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    print(f"alignkit serve: http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
