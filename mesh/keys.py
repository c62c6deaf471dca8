"""CurveZMQ key material: the keyring directory, who is authorised under which name, and the
key pair each role presents. Imports ZeroMQ (for key generation and z85) and nothing of ours.

A keyring directory (``letmesh keys init DIR``)::

    controller.key             the controller's public key (every host needs a copy)
    controller.key_secret      the controller's key pair (stays on the controller host, 0600)
    authorized/<role>/<name>.key   public keys allowed in, role one of agent, gateway, operator
    revoked/<role>-<name>.key  keys taken out by ``letmesh keys revoke``
    hosts/<role>-<name>/       what to copy to that host: controller.key + <role>-<name>.key_secret

A role pointed at a directory (``--keys DIR``) finds its own key pair as ``DIR/<role>-<name>.key_secret``
or ``DIR/hosts/<role>-<name>/<role>-<name>.key_secret``, so the same flag works with a host's copied
folder and with the whole keyring (``letmesh up``). A peer's authenticated name is ``<role>:<name>``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

ROLES = ("agent", "gateway", "operator")
CONTROLLER = "controller"
# Environment a worker or profiling process inherits from its agent: the agent's key pair and
# the controller's public key, so the child authenticates as the agent that runs it.
SECRET_FILE_ENV = "LETMESH_CURVE_SECRET_FILE"
SERVER_FILE_ENV = "LETMESH_CURVE_SERVER_FILE"
# A gateway's data address travels to workers with its public key after this separator
# (z85 has no space), so a worker can authenticate the gateway it dials.
_KEY_SEPARATOR = " curve="


class KeysError(Exception):
    """A keyring is missing, incomplete, or asked for something it cannot do."""


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """What a binding socket presents: its key pair, and who may connect (z85 public key -> name)."""

    public_key: bytes
    secret_key: bytes
    authorized: AuthorizedKeys


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a dialling socket presents: its key pair and the public key of the server it expects."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes
    secret_file: Path | None = None
    server_file: Path | None = None

    def child_env(self) -> dict[str, str]:
        """Environment variables that hand this key pair to a child process."""
        if self.secret_file is None or self.server_file is None:
            return {}
        return {SECRET_FILE_ENV: str(self.secret_file.resolve()), SERVER_FILE_ENV: str(self.server_file.resolve())}


class AuthorizedKeys:
    """Public key (z85 text) -> authenticated name (``role:name``), replaceable at any time.

    Two sources: the keyring's list (``replace``), and credentials issued for the life of one
    worker process (``issue``/``withdraw``, names ``worker:W``), which a new list leaves alone.
    ``version`` grows with every change. Thread-safe: a ZAP handler may read while the owner
    changes the map (revocation, a new list from the controller).
    """

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._listed: dict[str, str] = dict(keys or {})
        self._issued: dict[str, str] = {}  # name -> key
        self.version = 0
        self._merge()

    def _merge(self) -> None:  # holding the lock (or in __init__)
        by_key = dict(self._listed)
        for name, key in self._issued.items():
            by_key.setdefault(key, name)  # an issued key never shadows a listed one
        self._by_key = by_key
        self._names = frozenset(by_key.values())
        self.version += 1

    def replace(self, keys: Mapping[str, str]) -> None:
        with self._lock:
            self._listed = dict(keys)
            self._merge()

    def issue(self, name: str, public_key_z85: str) -> bool:
        """Let ``public_key_z85`` in as ``name`` (a worker's credential); True if that changed anything."""
        with self._lock:
            if self._issued.get(name) == public_key_z85:
                return False
            self._issued[name] = public_key_z85
            self._merge()
            return True

    def withdraw(self, name: str) -> bool:
        with self._lock:
            if self._issued.pop(name, None) is None:
                return False
            self._merge()
            return True

    def issued(self) -> dict[str, str]:
        """name -> public key of every issued credential."""
        with self._lock:
            return dict(self._issued)

    def replace_issued(self, issued: Mapping[str, str]) -> None:
        """Set the issued credentials to exactly ``issued`` (a gateway, from the controller's list)."""
        with self._lock:
            if dict(issued) != self._issued:
                self._issued = dict(issued)
                self._merge()

    def name_of(self, public_key_z85: str) -> str | None:
        return self._by_key.get(public_key_z85)

    def allowed(self, name: str) -> bool:
        """Whether ``name`` is authorised right now (a revoked name is refused from then on)."""
        return name in self._names

    def of_role(self, role: str) -> dict[str, str]:
        """name -> public key of every authorised peer of ``role``."""
        prefix = f"{role}:"
        return {n.removeprefix(prefix): k for k, n in self._by_key.items() if n.startswith(prefix)}

    def key_of(self, name: str) -> str | None:
        for key, known in self._by_key.items():
            if known == name:
                return key
        return None


class Keyring:
    """A keyring directory as the controller reads it; ``refresh`` picks up adds and revocations."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / f"{CONTROLLER}.key_secret").is_file():
            raise KeysError(f"{self.root} holds no controller key pair (create one with: letmesh keys init {self.root})")
        self.authorized = AuthorizedKeys()
        self._signature: tuple = ()
        self.version = 0  # grows with every change read
        self.refresh()

    def server_keys(self) -> ServerKeys:
        public, secret = zmq.auth.load_certificate(self.root / f"{CONTROLLER}.key_secret")
        assert secret is not None
        return ServerKeys(public, secret, self.authorized)

    def refresh(self) -> bool:
        """Re-read the authorised keys if the directory changed; True when it did."""
        signature = tuple(_mtime(self.root / "authorized" / role) for role in ROLES)
        if signature == self._signature:
            return False
        keys, complete = _read_authorized(self.root)
        # A key file that did not read (copied in while this refresh ran) is read at the next: its
        # folder's time does not change when the copy ends.
        self._signature = signature if complete else ()
        self.authorized.replace(keys)
        self.version += 1
        return True


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _read_authorized(root: Path) -> tuple[dict[str, str], bool]:
    """(public key -> peer name, whether every key file read)."""
    keys: dict[str, str] = {}
    complete = True
    for role in ROLES:
        folder = root / "authorized" / role
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError):
                complete = False  # a file being written
                continue
            keys[public.decode()] = f"{role}:{path.stem}"
    return keys, complete


# --- managing a keyring (letmesh keys ...) ----------------------------------------------------


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise KeysError(f"bad name {name!r}: use letters, digits, '-', '_' and '.'")


def _new_pair(folder: Path, stem: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, stem)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def init_keyring(root: str | Path, operator: str = "local") -> Path:
    """Create the controller's key pair and an operator key for this host's CLI; returns the operator folder."""
    root = Path(root)
    if (root / f"{CONTROLLER}.key_secret").exists():
        raise KeysError(f"{root} already holds a keyring")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    _new_pair(root, CONTROLLER)
    return add_peer(root, "operator", operator)


def add_peer(root: str | Path, role: str, name: str) -> Path:
    """Issue a key pair for ``role`` ``name``, authorise its public key, and return the folder to copy to that host."""
    root = Path(root)
    if role not in ROLES:
        raise KeysError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    _check_name(name)
    if not (root / f"{CONTROLLER}.key").is_file():
        raise KeysError(f"{root} is not a keyring (create one with: letmesh keys init {root})")
    if (root / "authorized" / role / f"{name}.key").exists():
        raise KeysError(f"{role} {name!r} is already authorised; revoke it first")
    host = root / "hosts" / f"{role}-{name}"
    if host.exists():
        shutil.rmtree(host)
    host.mkdir(parents=True)
    os.chmod(host, 0o700)
    public, _ = _new_pair(host, f"{role}-{name}")
    shutil.copyfile(root / f"{CONTROLLER}.key", host / f"{CONTROLLER}.key")
    authorized = root / "authorized" / role
    authorized.mkdir(parents=True, exist_ok=True)
    tmp = authorized / f".{name}.key.tmp"
    shutil.copyfile(public, tmp)
    os.replace(tmp, authorized / f"{name}.key")  # whole file or none: a refresh never reads half
    return host


def ensure_local_keyring(root: str | Path, *, agents: Iterable[str] = ("local",),
                         gateways: Iterable[str] = ("local",)) -> Path:
    """A keyring for a mesh on this machine (``letmesh up``): made on first use, extended as needed."""
    root = Path(root)
    if not (root / f"{CONTROLLER}.key_secret").exists():
        init_keyring(root)
    for role, names in (("agent", agents), ("gateway", gateways)):
        for name in names:
            if not (root / "authorized" / role / f"{name}.key").exists():
                add_peer(root, role, name)
    return root


def rejoin_hint(role: str, name: str) -> str:
    """What brings a peer whose key was revoked back: a revoked key is never taken again."""
    return (f"issue a new key with `letmesh keys add {role} {name}` where the keyring is, copy its "
            f"hosts/{role}-{name}/ folder to this host and restart the {role} with --keys <that folder>")


def revoke_peer(root: str | Path, name: str) -> str:
    """Take ``name``'s public key out of the authorised set; returns its role. Live controllers refuse it from then on."""
    root = Path(root)
    role, _, bare = name.rpartition(":")
    if role and role not in ROLES:
        raise KeysError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    _check_name(bare)  # it names files: never a path out of the keyring
    found = [r for r in ([role] if role else ROLES) if (root / "authorized" / r / f"{bare}.key").exists()]
    if not found:
        raise KeysError(f"no authorised key named {name!r} in {root}")
    if len(found) > 1:
        raise KeysError(f"{bare!r} names a key of each of {', '.join(found)}: say which, e.g. {found[0]}:{bare}")
    (candidate,) = found
    (root / "revoked").mkdir(exist_ok=True)
    os.replace(root / "authorized" / candidate / f"{bare}.key", root / "revoked" / f"{candidate}-{bare}.key")
    host = root / "hosts" / f"{candidate}-{bare}"
    if host.exists():
        shutil.rmtree(host)
    return candidate


def list_peers(root: str | Path) -> list[tuple[str, str, str]]:
    """(role, name, public key) of every authorised key."""
    root = Path(root)
    if not (root / f"{CONTROLLER}.key").is_file():
        raise KeysError(f"{root} is not a keyring (create one with: letmesh keys init {root})")
    return sorted((n.partition(":")[0], n.partition(":")[2], k) for k, n in _read_authorized(root)[0].items())


# --- what a role loads ------------------------------------------------------------------------


def own_secret_file(root: str | Path, role: str, name: str) -> Path:
    root = Path(root)
    stem = f"{role}-{name}"
    for path in (root / f"{stem}.key_secret", root / "hosts" / stem / f"{stem}.key_secret"):
        if path.is_file():
            return path
    raise KeysError(f"no key pair for {role} {name!r} in {root} (issue one with: letmesh keys add {role} {name})")


def client_keys(root: str | Path, role: str, name: str) -> ClientKeys:
    """The key pair of ``role`` ``name`` and the controller's public key, from a keys directory."""
    root = Path(root)
    secret_file = own_secret_file(root, role, name)
    server_file = root / f"{CONTROLLER}.key"
    if not server_file.is_file():
        server_file = secret_file.parent / f"{CONTROLLER}.key"
    if not server_file.is_file():
        raise KeysError(f"{root} holds no {CONTROLLER}.key (copy it from the controller's keyring)")
    return _client_from_files(secret_file, server_file)


def _client_from_files(secret_file: Path, server_file: Path) -> ClientKeys:
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise KeysError(f"{secret_file} holds no secret key")
    server, _ = zmq.auth.load_certificate(server_file)
    return ClientKeys(public, secret, server, secret_file, server_file)


def new_worker_credential(folder: str | Path, worker_id: str, server_file: Path) -> tuple[str, ClientKeys]:
    """A fresh key pair for one worker process, its secret in a 0600 file under ``folder``.

    Returns (public key, z85 text; the keys to hand to the child). The worker authenticates as
    ``worker:<worker_id>`` with it, and nothing else: the agent's own key pair stays with the
    agent. The agent reports the public key; the controller lets it in while the worker is in
    the plan, and tells the gateways.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    # One file per launch: the drop of a process this one replaced (same id, its exit seen late)
    # must not take this one's secret, nor may ids that read alike once sanitised share one.
    stem = "worker-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id) + "-" + secrets.token_hex(6)
    public_file, secret_file = _new_pair(folder, stem)
    Path(public_file).unlink(missing_ok=True)  # the controller learns it from the agent, not from a file
    keys = _client_from_files(Path(secret_file), server_file)
    return keys.public_key.decode(), keys


def clear_worker_credentials(folder: str | Path) -> int:
    """Remove every worker secret under ``folder``; how many. For an agent starting: its workers die
    with their parent, so any secret there was left by a previous process that did not end cleanly."""
    removed = 0
    for secret in Path(folder).glob("worker-*.key_secret"):
        secret.unlink(missing_ok=True)
        removed += 1
    return removed


def drop_worker_credential(keys: ClientKeys | None) -> None:
    """Remove a worker's secret file once its process has exited."""
    if keys is not None and keys.secret_file is not None:
        keys.secret_file.unlink(missing_ok=True)


def client_keys_from_env(env: Mapping[str, str] | None = None) -> ClientKeys | None:
    """The key pair an agent handed to this child process, if any."""
    env = os.environ if env is None else env
    secret, server = env.get(SECRET_FILE_ENV), env.get(SERVER_FILE_ENV)
    if not secret or not server:
        return None
    return _client_from_files(Path(secret), Path(server))


def gateway_server_keys(root: str | Path, name: str) -> ServerKeys:
    """A gateway's data socket presents the gateway's own key pair; agents are authorised by the controller's list."""
    public, secret = zmq.auth.load_certificate(own_secret_file(root, "gateway", name))
    assert secret is not None
    return ServerKeys(public, secret, AuthorizedKeys())


def operator_keys(root: str | Path, name: str | None = None) -> ClientKeys:
    """The CLI's operator key pair: ``name``, or the only (first) operator key in the directory."""
    root = Path(root)
    if name:
        return client_keys(root, "operator", name)
    found = sorted(root.glob("operator-*.key_secret")) + sorted(root.glob("hosts/operator-*/operator-*.key_secret"))
    if not found:
        raise KeysError(f"no operator key in {root} (issue one with: letmesh keys add operator NAME)")
    return client_keys(root, "operator", found[0].name.removeprefix("operator-").removesuffix(".key_secret"))


# --- addresses ---------------------------------------------------------------------------------


def with_server_key(address: str, public_key_z85: str) -> str:
    """``address`` carrying the public key its server presents (a gateway's data address for workers)."""
    return f"{address}{_KEY_SEPARATOR}{public_key_z85}" if public_key_z85 else address


def split_server_key(address: str) -> tuple[str, bytes | None]:
    bare, sep, key = address.partition(_KEY_SEPARATOR)
    return bare, (key.encode() if sep and key else None)


def is_loopback(address: str) -> bool:
    """True for inproc/ipc addresses and TCP on a loopback host; a wildcard or name is not loopback."""
    bare, _ = split_server_key(address)
    if not bare.startswith("tcp://"):
        return True
    host = urlsplit(bare).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_plaintext(addresses: Iterable[str], keys_dir: str, insecure: bool, role: str) -> None:
    """Raise KeysError when a role would talk plaintext beyond this host without having been told to."""
    if keys_dir or insecure:
        return
    remote = [a for a in addresses if a and not is_loopback(a)]
    if remote:
        raise KeysError(
            f"{', '.join(remote)} is not a loopback address and no keys are configured for the {role}; "
            f"give --keys DIR (see: letmesh keys init) or --insecure to run it unauthenticated and unencrypted"
        )
