"""API keys and roles for ``edgeslm serve``: a TOML file of hashed keys, checked in constant time.

    [[key]]
    id = "alice"
    role = "admin"
    sha256 = "9f86d08..."   # of the key; the key itself is shown once, by 'edgeslm keys add'

Roles follow the issue's table: ``admin`` may do everything (and alone reads the audit log),
``user`` generates, chats, embeds, lists, shows, sees running models and fetches models (another
edgeslm pulls from this one), ``reader`` lists, shows and reads metrics.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..errors import InputFileError, InvalidParameterError

KEY_PREFIX = "esk-"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX = re.compile(r"[0-9a-f]{64}\Z")
MAX_KEYS = 10_000
MAX_FILE_BYTES = 4 * 2**20


class Action(str, enum.Enum):
    GENERATE = "generate"  # generate, chat, completions
    EMBED = "embed"
    LIST = "list"
    SHOW = "show"
    PS = "ps"
    METRICS = "metrics"
    PULL = "pull"
    FETCH = "fetch"  # read manifests and blobs: another edgeslm pulls from this one
    CREATE = "create"
    COPY = "copy"
    DELETE = "delete"
    AUDIT = "audit"  # the audit log, its chain and report (the web page's Audit view)


A = Action
ROLES: Mapping[str, frozenset[Action]] = {
    "admin": frozenset(Action),
    "user": frozenset({A.GENERATE, A.EMBED, A.LIST, A.SHOW, A.PS, A.FETCH}),
    "reader": frozenset({A.LIST, A.SHOW, A.METRICS}),
}


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    sha256: str  # hex digest of the key

    def may(self, action: Action) -> bool:
        return action in ROLES[self.role]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """The keys of one file; ``find`` compares against every stored hash in constant time."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys

    def find(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        found = None
        for key in self.keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found


def load_keys(path: Path) -> KeyRing:
    """Read and check a key file; every problem names the entry and what to do."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputFileError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes; is it a key file?")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"key file {path} does not exist; create one with 'edgeslm keys add {path}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read key file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(f"key file {path} is not valid TOML: {exc}") from None
    entries = data.get("key", [])
    if set(data) - {"key"} or not isinstance(entries, list):
        raise InputFileError(f"key file {path}: expected only [[key]] tables, found {sorted(data)}")
    if len(entries) > MAX_KEYS:
        raise InputFileError(f"key file {path} has {len(entries):,} keys; at most {MAX_KEYS:,}")
    keys = tuple(_entry(path, i, e) for i, e in enumerate(entries))
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputFileError(f"key file {path}: the id {dup!r} appears twice; ids must be unique")
    return KeyRing(keys)


def _entry(path: Path, index: int, entry: object) -> ApiKey:
    where = f"key file {path}, key #{index + 1}"
    if not isinstance(entry, dict):
        raise InputFileError(f"{where}: expected a table with id, role and sha256")
    if "key" in entry:
        raise InputFileError(
            f"{where} holds a plain key; keys are stored hashed only — remove it and run 'edgeslm keys add'"
        )
    unknown = set(entry) - {"id", "role", "sha256"}
    if unknown:
        raise InputFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected id, role, sha256")
    key_id, role, digest = entry.get("id"), entry.get("role"), entry.get("sha256")
    if not isinstance(key_id, str) or not _ID.match(key_id):
        raise InputFileError(f"{where}: id must be 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise InputFileError(f"{where} ({key_id}): role {role!r} is unknown; valid: {', '.join(ROLES)}")
    if not isinstance(digest, str) or not _HEX.match(digest):
        raise InputFileError(f"{where} ({key_id}): sha256 must be 64 lowercase hex digits")
    return ApiKey(key_id, str(role), digest)


def add_key(path: Path, key_id: str, role: str) -> str:
    """Append a new key to ``path`` (created if missing); return the key, which is not stored."""
    if not _ID.match(key_id):
        raise InvalidParameterError(f"--id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise InvalidParameterError(f"--role {role!r} is unknown; valid: {', '.join(ROLES)}")
    existing = load_keys(path).keys if path.exists() else ()
    if any(k.id == key_id for k in existing):
        raise InvalidParameterError(f"{path} already has a key with id {key_id!r}; choose another id")
    key = new_key()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text += ("\n" if text and not text.endswith("\n") else "") + (
        f'\n[[key]]\nid = "{key_id}"\nrole = "{role}"\nsha256 = "{hash_key(key)}"\n'
    )
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by its owner only
    with os.fdopen(fd, "w", encoding="utf-8") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)
    return key
