"""Named remotes (``edgeslm remote add NAME URL``): another ``edgeslm serve`` (http(s)://HOST:PORT)
or a Hugging Face model repo (``hf://ORG/REPO``), kept in ``<home>/remotes.json``.

A remote's key is never written there: ``--key-file`` names a file that holds it (an
``edgeslm keys add`` key for a server, a token for the hub), read when the remote is used.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from ..errors import InputFileError, InvalidParameterError, ModelNotFoundError
from ..store.atomic import write_beside

if TYPE_CHECKING:
    from ..store import Store
    from ..store.records import Manifest

Progress = Callable[[int], None]  # bytes moved so far


class RemoteStore(Protocol):
    """What push and pull need of a remote (``edge.EdgeRemote``, ``hf.HfRemote``)."""

    def manifests(self) -> dict[str, Manifest]: ...
    def offset(self, digest: str) -> int | None: ...
    def send(self, store: Store, digest: str, size: int, progress: Progress | None = None) -> None: ...
    def publish(self, manifests: Sequence[Manifest], force: bool) -> list[str]: ...
    def fetch(self, store: Store, digest: str, size: int, progress: Progress | None = None) -> None: ...
    def close(self) -> None: ...


REMOTES_FILE = "remotes.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
MAX_KEY_BYTES = 4096


class RemoteKind(str, enum.Enum):
    EDGESLM = "edgeslm"  # another edgeslm serve
    HF = "huggingface"  # a Hugging Face model repo


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    key_file: str | None = None

    @property
    def kind(self) -> RemoteKind:
        return RemoteKind.HF if self.url.startswith("hf://") else RemoteKind.EDGESLM

    @property
    def repo_id(self) -> str:
        return self.url.removeprefix("hf://")

    def key(self) -> str | None:
        """The key from ``key_file`` (None without one)."""
        if self.key_file is None:
            return None
        try:
            raw = Path(self.key_file).read_bytes()[: MAX_KEY_BYTES + 1]
        except OSError as exc:
            raise InputFileError(f"cannot read the key file of remote {self.name!r} ({exc.strerror}): "
                                 f"{self.key_file}; give another: edgeslm remote add {self.name} URL --key-file FILE "
                                 "--force") from None
        key = raw.decode("utf-8", errors="replace").strip()
        if not key or len(raw) > MAX_KEY_BYTES or any(not c.isprintable() or c.isspace() for c in key):
            raise InputFileError(f"the key file of remote {self.name!r} ({self.key_file}) must hold one key, one line")
        return key


def check_url(url: str) -> str:
    """``url`` as stored, or an error that says what a remote's address looks like."""
    if url.startswith("hf://"):
        parts = url.removeprefix("hf://").split("/")
        if len(parts) == 2 and all(_REPO_PART.match(p) and ".." not in p for p in parts):
            return url
        raise InvalidParameterError(f"{url[:100]!r} is not a hub repo; write hf://ORG/REPO")
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname or split.username or split.password:
        raise InvalidParameterError(f"{url[:100]!r} is not a remote address; give http(s)://HOST:PORT of an 'edgeslm "
                                    "serve' (no user or password in it: use --key-file) or hf://ORG/REPO")
    if split.query or split.fragment or split.path not in ("", "/"):
        raise InvalidParameterError(f"{url[:100]!r}: give the server's address alone, http(s)://HOST:PORT")
    return f"{split.scheme}://{split.netloc}"


def _path(home: Path) -> Path:
    return home / REMOTES_FILE


def load_remotes(home: Path) -> dict[str, Remote]:
    path = _path(home)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes())
        return {name: Remote(name, check_url(d["url"]), d.get("key_file")) for name, d in data["remotes"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, InvalidParameterError) as exc:
        raise InputFileError(f"{path} is not a valid list of remotes ({str(exc)[:120]}); remove it and add them "
                             "again (edgeslm remote add)") from None


def _save(home: Path, remotes: dict[str, Remote]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    data = {"remotes": {n: {k: v for k, v in asdict(r).items() if k != "name"} for n, r in sorted(remotes.items())}}
    write_beside(_path(home), json.dumps(data, indent=2).encode() + b"\n")


def add_remote(home: Path, name: str, url: str, key_file: Path | None = None, *, force: bool = False) -> Remote:
    if not _NAME.match(name):
        raise InvalidParameterError(f"{name[:80]!r} is not a remote name; use letters, digits, '.', '_' and '-'")
    remotes = load_remotes(home)
    if name in remotes and not force:
        raise InvalidParameterError(f"remote {name!r} exists ({remotes[name].url}); add it with --force to replace it")
    remote = Remote(name, check_url(url), str(key_file.resolve()) if key_file else None)
    remote.key()  # readable, one line: say so now rather than at the first push
    remotes[name] = remote
    _save(home, remotes)
    return remote


def remove_remote(home: Path, name: str) -> Remote:
    remotes = load_remotes(home)
    remote = get_remote(home, name, remotes)
    del remotes[name]
    _save(home, remotes)
    return remote


def get_remote(home: Path, name: str, remotes: dict[str, Remote] | None = None) -> Remote:
    remotes = load_remotes(home) if remotes is None else remotes
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none yet"
        raise ModelNotFoundError(f"no remote named {name[:80]!r} (known: {known}); add one: edgeslm remote add "
                                 f"{name[:80] if _NAME.match(name) else 'NAME'} URL")
    return remotes[name]
