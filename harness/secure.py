"""TLS and a password for a run: what the server is started with, what clients are given.

`python -m harness.run --tls-cert FILE --tls-key FILE --password-file FILE` runs any
scenario against this project's server behind TLS and a password: the server gets the
three options in its ``{server_options}``, and every client - the chat clients through
``{client_options}`` in the client template, the byte-exact raw parties directly - gets
``--tls-ca FILE`` (the certificate itself, unless ``--tls-ca`` names another) and the
same ``--password-file``. The files must be readable at the same path on every host
(netns hosts share this machine's files; ssh hosts need copies).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Secure:
    """TLS and password files for one run (None: not used)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # what clients trust; default: tls_cert
    password_file: str | None = None
    # Clients take any certificate: for hosts whose address the certificate cannot name
    # in advance (netns addresses, ssh hosts reached by another name).
    tls_insecure: bool = False

    def problem(self) -> str | None:
        """Why these options cannot be used together, if they cannot."""
        if (self.tls_cert is None) != (self.tls_key is None):
            return "--tls-cert and --tls-key go together"
        if (self.tls_ca is not None or self.tls_insecure) and self.tls_cert is None:
            return "--tls-ca and --tls-insecure need --tls-cert and --tls-key (the server's TLS)"
        if self.tls_ca is not None and self.tls_insecure:
            return "--tls-ca and --tls-insecure contradict each other"
        return None

    def server_options(self) -> tuple[str, ...]:
        """What this project's server is started with."""
        options: list[str] = []
        if self.tls_cert is not None and self.tls_key is not None:
            options += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        if self.password_file is not None:
            options += ["--password-file", self.password_file]
        return tuple(options)

    def client_options(self) -> tuple[str, ...]:
        """What chatbox-client and the raw client are started with (same option names)."""
        options: list[str] = []
        ca = self.tls_ca or self.tls_cert
        if self.tls_insecure:
            options += ["--tls-insecure"]
        elif ca is not None:
            options += ["--tls-ca", ca]
        if self.password_file is not None:
            options += ["--password-file", self.password_file]
        return tuple(options)
