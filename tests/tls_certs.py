"""Test certificates made with the real `openssl` per test, and TLS peers for the server.

Each test makes its own self-signed certificate in its tmp_path (valid for 127.0.0.1
and localhost unless told otherwise): nothing is shared between tests or kept.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from live_server import WAIT, Peer, ServerProcess
from needs import missing

OPENSSL = shutil.which("openssl")


def make_certificate(
    directory: Path, name: str = "server", names: str = "IP:127.0.0.1,DNS:localhost"
) -> tuple[Path, Path]:
    """A fresh self-signed certificate and its key (PEM files) for ``names`` (a SAN list)."""
    if OPENSSL is None:
        missing("openssl is not installed")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    argv = [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
    argv += ["-subj", f"/CN={name}", "-addext", f"subjectAltName={names}"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    return cert, key


def tls_peer(server: ServerProcess, ca: Path) -> Peer:
    """A TLS client of ``server`` that trusts ``ca`` and checks the name 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(ca))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    return Peer(context.wrap_socket(sock, server_hostname="127.0.0.1"))
