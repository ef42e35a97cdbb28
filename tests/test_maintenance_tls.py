"""STARTTLS with certificate verification and AUTH with a 0600 password file, against aiosmtpd."""

from __future__ import annotations

import os
import ssl
import subprocess

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from nocpolicy.errors import NocpolicyError
from test_maintenance_smtp import SmtpSink, window


def make_cert(tmp_path):
    key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(crt)], check=True, capture_output=True, timeout=60)
    return key, crt


class TlsSink(SmtpSink):
    def __init__(self, key, crt, user: str, password: str):
        super().__init__()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(crt), str(key))
        self.logins: list[str] = []
        self.creds = (user.encode(), password.encode())
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, tls_context=ctx,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=self.authenticate)

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == self.creds:
            self.logins.append(auth_data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.mark.skipif(not os.path.exists("/usr/bin/openssl"), reason="needs the openssl CLI to make a test certificate")
async def test_starttls_and_auth_from_a_0600_password_file(tmp_path):
    from test_maintenance_smtp import Harness, smtp_yaml, until
    key, crt = make_cert(tmp_path)
    pw = tmp_path / "smtp.password"
    pw.write_text("correct horse\n")
    os.chmod(pw, 0o600)
    with TlsSink(key, crt, "noc", "correct horse") as sink:
        h = Harness(tmp_path, None)
        extra = f"    starttls: true\n    username: noc\n    password_file: {pw}\n    ca_file: {crt}\n"
        (h.dir / "maintenance.yaml").write_text(smtp_yaml(sink.port, extra))
        from nocpolicy.policy.load import load_policy
        h.policy = load_policy(h.dir)
        await h.start()
        try:
            await h.cmd("maintenance.add", **window("mw-tls", "2026-01-20T01:00", "2026-01-20T05:00",
                                                    scope={"customers": ["c1001"]}))
            await until(lambda: len(sink.messages) == 1, what="notice over STARTTLS")
            assert sink.logins == ["noc"]
            # the certificate is verified: without the CA the session is refused
            import dataclasses

            from nocpolicy.maintenance.smtp import Mailer
            cfg = dataclasses.replace(h.policy.maintenance.smtp, ca_file=None)
            with pytest.raises(NocpolicyError, match="(?i)certificate"):
                async with Mailer(cfg, "correct horse").session():
                    pass
            # a wrong password is a temporary failure (the notice waits, the error says why)
            pw.write_text("wrong\n")
            new = load_policy(h.dir)
            from nocpolicy.policy.diff import diff_policies
            (await h.comp.prepare(new, diff_policies(h.policy, new)))()
            await h.cmd("maintenance.add", **window("mw-tls2", "2026-01-21T01:00", "2026-01-21T05:00",
                                                    scope={"customers": ["c1001"]}))

            def row():
                return h.store.one("SELECT * FROM mw_outbox WHERE window_id='mw-tls2'")
            await until(lambda: row()["attempts"] == 1, what="failed login attempt")
            assert row()["state"] == "pending" and "535" in row()["last_error"]
            # a password file others can read is refused at policy load
            os.chmod(pw, 0o644)
            with pytest.raises(NocpolicyError, match="chmod 600"):
                await h.comp.prepare(new, diff_policies(h.policy, new))
        finally:
            await h.stop()
