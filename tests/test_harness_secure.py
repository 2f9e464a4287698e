"""The harness against this project's server behind TLS and a password (`--tls-cert`,
`--tls-key`, `--password-file`): every client, chat or raw, gets in, and duplex passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from faulty_relays import ROOT
from tls_certs import make_certificate

# The default server command, in the mode under test ({server_options} carries the TLS
# and password options the harness adds).
SERVER = "{python} -m chatbox.server {port} --host {host} --mode %s {server_options}"


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_duplex_passes_over_tls_with_a_password(mode: str, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    password = tmp_path / "password"
    password.write_text("harness secret\n")
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "harness.run", "--scenario", "duplex", "--quiet"]
    argv += ["--server-cmd", SERVER % mode, "--json", str(report)]
    argv += ["--tls-cert", str(cert), "--tls-key", str(key), "--password-file", str(password)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: 1/1 runs passed" in out.stdout
    assert f"--tls-cert {cert} --tls-key {key} --password-file {password}" in out.stdout
    # The raw party (byte-exact, for the burst) got in too.
    assert "burst wrote" in out.stdout and "could not" not in out.stdout
    assert json.loads(report.read_text())["exit_code"] == 0


def test_tls_cert_without_its_key_is_a_usage_error(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "harness.run", "--tls-cert", str(tmp_path / "c.pem")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "--tls-cert and --tls-key go together" in out.stderr
    assert "Traceback" not in out.stderr


def test_clients_are_given_the_certificate_or_told_to_take_any() -> None:
    from harness.secure import Secure

    secure = Secure("s.crt", "s.key", password_file="pw")
    assert secure.server_options() == (
        "--tls-cert", "s.crt", "--tls-key", "s.key", "--password-file", "pw"
    )  # fmt: skip
    assert secure.client_options() == ("--tls-ca", "s.crt", "--password-file", "pw")
    assert Secure("s.crt", "s.key", tls_insecure=True).client_options() == ("--tls-insecure",)
    assert Secure("s.crt", "s.key", "ca.crt").client_options() == ("--tls-ca", "ca.crt")
    assert Secure(tls_insecure=True).problem() is not None
    assert Secure("s.crt", "s.key", "ca.crt", tls_insecure=True).problem() is not None
    assert Secure().client_options() == () and Secure().problem() is None
