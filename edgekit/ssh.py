"""The SSH transport to a device (paramiko): parse `ssh://user@host[:port]?python=...&workdir=...`, connect with
host-key checking and key/agent auth only, run quoted commands, stream their output, move files over SFTP. Not a
Backend: edgekit.deploy uses it to run the device agent, whatever runtime the device has.

Safety: an unknown host key is refused unless the caller passes accept_new_host (then it is appended to
known_hosts); a changed key is always refused. Passwords are never used. Every remote argument goes through
shlex.quote. Every failure is an EdgekitError with one line saying what and a hint saying how to fix it."""
from __future__ import annotations

import os
import posixpath
import shlex
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from edgekit._optional import require
from edgekit.errors import EdgekitError, reading
from edgekit.io import atomic_path, slug

DEFAULT_PYTHON = "python3"
_QUERY_KEYS = {"python", "workdir"}


class ConnectionDropped(EdgekitError):
    """The SSH link died (a transfer or command found it): callers that stream a run report how far it got."""


@dataclass
class Target:
    """One SSH device. `python` is the interpreter the agent runs under; `workdir` the folder holding the
    per-run directories and the engine cache (default ~/.cache/edgekit on the device)."""

    host: str
    user: str | None = None
    port: int = 22
    python: str = DEFAULT_PYTHON
    workdir: str | None = None
    url: str = ""

    @classmethod
    def parse(cls, url: str) -> "Target":
        if not url.isprintable():  # urlsplit silently drops a newline or tab: the device named would not be the one written
            raise EdgekitError(f"target {url!r} contains a control character (newline, tab, ...)", "write the target on one line: ssh://user@host[:port]")
        if "://" not in url:
            raise EdgekitError(f"target '{url}' is not an ssh:// URL", "write it as ssh://user@host[:port], e.g. ssh://nvidia@orin.local")
        try:
            parts = urlsplit(url)
        except ValueError as e:  # e.g. "Invalid IPv6 URL" for an unclosed '['
            raise EdgekitError(f"target '{url}' is not a valid URL ({e})", "write it as ssh://user@host[:port], an IPv6 address in brackets: ssh://user@[::1]:22") from None
        if parts.scheme != "ssh":
            raise EdgekitError(f"target scheme '{parts.scheme}' is not supported", "use ssh://user@host[:port]")
        if not parts.hostname:
            raise EdgekitError(f"target '{url}' has no host name", "write it as ssh://user@host[:port]")
        if parts.password is not None:
            raise EdgekitError("passwords in target URLs are not accepted (they would end up in logs and shell history)",
                               "use an SSH key: ssh-copy-id user@host, then --identity KEY or ssh-agent")
        try:
            port = parts.port or 22
        except ValueError as e:
            raise EdgekitError(f"target '{url}' has a bad port", "the port must be a number between 1 and 65535") from e
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - _QUERY_KEYS)
        if unknown:
            raise EdgekitError(f"unknown target option(s) {unknown} in '{url}'", f"supported: {', '.join(sorted(_QUERY_KEYS))}")
        if parts.path not in ("", "/"):
            raise EdgekitError(f"target '{url}' has a path; the remote folder is an option", "use ssh://user@host?workdir=/path")
        if not all(v.isprintable() for v in [unquote(parts.username or ""), *query.values()]):  # %0a and the like, decoded
            raise EdgekitError(f"target '{url}' encodes a control character (%0a, %09, ...) in its user or options", "remove it")
        return cls(host=parts.hostname, user=unquote(parts.username) if parts.username else None, port=port,
                   python=query.get("python") or DEFAULT_PYTHON, workdir=query.get("workdir") or None, url=url)

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{'' if self.port == 22 else f':{self.port}'}"

    @property
    def slug(self) -> str:
        """A file-name-safe name for this target's results folder."""
        return slug(self.host + ("" if self.port == 22 else f"-{self.port}"))


def quote_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


class _HostKeyPolicy:
    """Refuse unknown host keys unless accepting is allowed; an accepted key is appended to known_hosts (never
    rewriting the file, which may hold entries paramiko cannot parse)."""

    def __init__(self, accept_new: bool, known_hosts: Path):
        self.accept_new, self.known_hosts = accept_new, known_hosts

    def missing_host_key(self, client, hostname, key):
        fp = _fingerprint(key)
        if not self.accept_new:
            raise EdgekitError(
                f"host {hostname} is not in {self.known_hosts} (its {key.get_name()} key is {fp}); refusing to connect",
                "check that fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then rerun with --accept-new-host")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        os.chmod(self.known_hosts, 0o600)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _fingerprint(key) -> str:
    try:
        return key.fingerprint  # paramiko >= 3.2: "SHA256:..."
    except AttributeError:
        import base64
        import hashlib

        return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


@dataclass
class Connection:
    target: Target
    known_hosts: Path | None = None
    accept_new_host: bool = False
    identity: Path | None = None
    timeout: float = 15.0
    client: object = field(default=None, init=False, repr=False)
    _sftp: object = field(default=None, init=False, repr=False)

    def __enter__(self) -> "Connection":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> "Connection":
        paramiko = require("paramiko", "deploying over SSH")
        t = self.target
        known = Path(self.known_hosts or Path.home() / ".ssh" / "known_hosts").expanduser()
        client = paramiko.SSHClient()
        if known.exists():
            with reading(known, "known_hosts file", "fix or move the file, or pass --known-hosts FILE"):
                client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_HostKeyPolicy(self.accept_new_host, known))
        identity = Path(self.identity).expanduser() if self.identity else None
        if identity is not None and not identity.is_file():
            raise EdgekitError(f"identity file {identity} does not exist", "pass the private key file, e.g. --identity ~/.ssh/id_ed25519")
        user = t.user or os.environ.get("USER") or "root"
        try:
            # A given key is the only key tried (predictable); without one: ssh-agent, then ~/.ssh/id_*.
            client.connect(t.host, port=t.port, username=user, key_filename=str(identity) if identity else None,
                           allow_agent=identity is None, look_for_keys=identity is None, password=None,
                           timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout)
        except EdgekitError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise EdgekitError(f"the host key of {t.address} has CHANGED (got {_fingerprint(e.key)}); refusing to connect",
                               f"if the device was reinstalled, remove the old key with ssh-keygen -R '[{t.host}]:{t.port}' -f {known} "
                               "and rerun with --accept-new-host; otherwise someone may be intercepting the connection") from None
        except paramiko.PasswordRequiredException as e:
            client.close()
            raise EdgekitError(f"the private key {identity or '(default)'} is encrypted", "load it into ssh-agent (ssh-add KEY) and rerun without --identity") from e
        except paramiko.AuthenticationException as e:
            client.close()
            tried = f"key {identity}" if identity else "ssh-agent and ~/.ssh/id_* keys"
            raise EdgekitError(f"authentication refused by {user}@{t.host}:{t.port} (tried {tried}; passwords are never used)",
                               f"install your public key on the device: ssh-copy-id -i KEY.pub -p {t.port} {user}@{t.host}") from e
        except socket.gaierror as e:
            client.close()
            raise EdgekitError(f"cannot resolve host name '{t.host}' ({e.strerror})", "check the name, or use the device's IP address") from e
        except (OSError, paramiko.ssh_exception.NoValidConnectionsError, socket.timeout) as e:
            client.close()
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise EdgekitError(f"cannot reach {t.host}:{t.port} ({why})",
                               "check that the device is on, on the network, and running sshd (systemctl status ssh)") from e
        except paramiko.SSHException as e:
            client.close()
            raise EdgekitError(f"SSH to {t.address} failed: {e}", "check that the port is an SSH server and try `ssh` by hand") from e
        client.get_transport().set_keepalive(10)  # notice a dead link within seconds, not at the TCP timeout
        self.client = client
        return self

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 — closing a dead channel
                pass
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    # ---- commands --------------------------------------------------------------------------------------

    def run(self, argv: list[str] | str, timeout: float | None = 60.0, cwd: str | None = None) -> tuple[int, str, str]:
        """Run a command (argv is quoted; a str must already be quoted) and return (exit code, stdout, stderr)."""
        cmd = argv if isinstance(argv, str) else quote_command(argv)
        if cwd:
            cmd = f"cd {shlex.quote(cwd)} && {cmd}"
        try:
            _, out, err = self.client.exec_command(cmd, timeout=timeout)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
            return out.channel.recv_exit_status(), stdout, stderr
        except (OSError, EOFError) as e:
            raise self.dropped(e) from e
        except Exception as e:  # paramiko.SSHException
            raise self.dropped(e) from e

    def stream(self, argv: list[str], on_line, cwd: str | None = None, stderr_to=None) -> int | None:
        """Run a command, calling on_line(text) for each stdout line as it arrives. stderr goes to the
        `stderr_to` file object. Returns the exit code, or None when the connection dropped."""
        cmd = quote_command(argv)
        if cwd:
            cmd = f"cd {shlex.quote(cwd)} && {cmd}"
        chan = self.client.get_transport().open_session()
        chan.exec_command(cmd)
        errf = chan.makefile_stderr("rb")

        def drain():
            try:
                for line in errf:
                    if stderr_to is not None:
                        stderr_to.write(line.decode(errors="replace"))
                        stderr_to.flush()
            except Exception:  # noqa: BLE001 — the channel died; the main loop reports it
                pass

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        try:
            for raw in chan.makefile("rb"):
                on_line(raw.decode(errors="replace").rstrip("\n"))
        except (OSError, EOFError, socket.timeout, ConnectionDropped):  # the last: on_line's own transfer found it
            return None
        except Exception as e:  # paramiko.SSHException on a dead transport
            if "SSHException" in type(e).__name__ or "Channel" in str(e):
                return None
            raise
        t.join(timeout=5)
        transport = self.client.get_transport()
        if not chan.exit_status_ready() and not (transport and transport.is_active()):
            return None
        code = chan.recv_exit_status()
        return None if code == -1 else code

    def dropped(self, e: BaseException) -> EdgekitError:
        return ConnectionDropped(f"the connection to {self.target.address} dropped ({type(e).__name__}: {e})",
                            "check the network and the device; rerun the same command to resume")

    # ---- files -----------------------------------------------------------------------------------------

    @property
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def home(self) -> str:
        return self.sftp.normalize(".")

    def makedirs(self, path: str) -> None:
        parts = []
        p = path
        while p not in ("", "/"):
            try:
                self.sftp.stat(p)
                break
            except FileNotFoundError:
                parts.append(p)
                p = posixpath.dirname(p)
        for d in reversed(parts):
            self.sftp.mkdir(d)

    def put(self, local: Path, remote: str) -> None:
        try:
            self.sftp.put(str(local), remote)
        except OSError as e:
            if getattr(e, "errno", None) is None and "Failure" in str(e):  # SFTP reports ENOSPC as a bare failure
                raise EdgekitError(f"writing {remote} on {self.target.address} failed (disk full?)",
                                   "free space on the device or pass ?workdir= on a larger disk") from e
            raise

    def get(self, remote: str, local: Path) -> None:
        with atomic_path(local) as tmp:
            try:
                self.sftp.get(remote, str(tmp))
            except (OSError, EOFError) as e:
                if getattr(e, "errno", None) is None:  # paramiko's "Socket is closed": the link, not the local disk
                    raise self.dropped(e) from e
                raise

    def exists(self, remote: str) -> bool:
        try:
            return stat.S_ISREG(self.sftp.stat(remote).st_mode)
        except FileNotFoundError:
            return False
