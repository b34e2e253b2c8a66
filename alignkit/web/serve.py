"""`alignkit serve`: run the app on uvicorn, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from alignkit.errors import UserError
from alignkit.web.app import ServeSettings, create_app


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted; a port in use is the user's to fix, so it is one line."""
    import socket

    import uvicorn

    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    app = create_app(settings)
    print(f"alignkit serve: http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
