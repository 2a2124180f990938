"""The cluster key: 32 random bytes that the coordinator, the workers and the admin
clients of one cluster share, in a file only its owner may read.

The file holds the key as one line of 64 hex digits: the join token that ``exo-spec
key --join-token`` prints and ``exo-spec key --join`` writes on another machine. Its
path is ``--key-file``, else ``$EXO_SPEC_KEY_FILE``, else
``$XDG_CONFIG_HOME/exo-spec/cluster.key`` (else ``~/.config/exo-spec/cluster.key``).
No error message, log line or ``repr`` carries the key itself.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

KEY_BYTES = 32
ENV = "EXO_SPEC_KEY_FILE"


class KeyFileError(RuntimeError):
    """The key file cannot be used: one line for the user, naming the path only."""


@dataclass(frozen=True)
class ClusterKey:
    secret: bytes = field(repr=False)

    def __post_init__(self):
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a cluster key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def generate(cls) -> ClusterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_token(cls, token: str) -> ClusterKey:
        """ValueError (not quoting ``token``) unless it is 64 hex digits."""
        text = token.strip()
        if len(text) != 2 * KEY_BYTES or not all(c in "0123456789abcdefABCDEF" for c in text):
            raise ValueError(f"a cluster key is {2 * KEY_BYTES} hex digits")
        return cls(bytes.fromhex(text))

    def token(self) -> str:
        return self.secret.hex()


def default_key_file() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "exo-spec" / "cluster.key"


def key_path(given: Path | None = None) -> Path:
    """``given`` (a ``--key-file``), else ``$EXO_SPEC_KEY_FILE``, else the default."""
    if given is not None:
        return given.expanduser()
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else default_key_file()


def load_key(given: Path | None = None) -> ClusterKey:
    """The key in ``key_path(given)``; KeyFileError when it is missing, readable by
    other users (as ssh refuses such a private key) or not a key."""
    path = key_path(given)
    try:
        with open(path) as f:
            if os.fstat(f.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyFileError(f"the cluster key {path} is open to other users: "
                                   f"chmod 600 {path}")
            text = f.read(4 * KEY_BYTES)
    except FileNotFoundError:
        raise KeyFileError(f"no cluster key at {path}: copy the coordinator's key file "
                           f"there (mode 0600), or run `exo-spec key --join TOKEN` with the "
                           f"token `exo-spec key --join-token` prints on the coordinator's "
                           f"machine") from None
    except OSError as e:
        raise KeyFileError(f"cannot read the cluster key {path}: {e.strerror}") from None
    try:
        return ClusterKey.from_token(text)
    except ValueError as e:
        raise KeyFileError(f"{path} holds no cluster key ({e})") from None


def save_key(key: ClusterKey, given: Path | None = None) -> Path:
    """Write ``key`` to a new file only its owner may read (its folder made too);
    KeyFileError when one is there already (it is never overwritten)."""
    path = key_path(given)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists already; remove it first to use another "
                           f"cluster key") from None
    except OSError as e:
        raise KeyFileError(f"cannot write the cluster key {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key.token() + "\n")
    return path


def load_or_create_key(given: Path | None = None) -> tuple[ClusterKey, bool]:
    """The key in ``key_path(given)``, made there first when there is no such file;
    whether it was made now. KeyFileError as ``load_key`` and ``save_key``."""
    path = key_path(given)
    if path.exists():
        return load_key(given), False
    key = ClusterKey.generate()
    try:
        save_key(key, given)
    except KeyFileError:
        if not path.exists():
            raise
        return load_key(given), False  # another process made one at the same moment
    return key, True


def add_key_file_flag(p, when: str = "", made: bool = False) -> None:
    """``--key-file``; ``when`` starts its help ("with --coordinator: "), ``made``: the
    command makes the key when there is none."""
    p.add_argument("--key-file", type=Path, metavar="PATH",
                   help=f"{when}the cluster key (default: ${ENV}, else "
                        "$XDG_CONFIG_HOME/exo-spec/cluster.key, else "
                        "~/.config/exo-spec/cluster.key"
                        + ("; made there, mode 0600, when there is none)" if made else ")"))
