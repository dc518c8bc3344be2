"""An Ethereum account from an encrypted keystore (Web3 Secret Storage, the format go-livepeer and geth use).

The password comes from the environment variable ``STREAMGW_ETH_PASSWORD`` or from a file, never from a
command-line flag (other users could read it in the process list), and is never logged or put in an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from eth_account import Account

from streamgw.errors import ConfigError
from streamgw.livepeer.signing import Signer, checksum_address

__all__ = ["PASSWORD_ENV", "load_signer", "new_keystore", "read_password"]

PASSWORD_ENV = "STREAMGW_ETH_PASSWORD"
MAX_KEYSTORE_BYTES = 64 * 1024


def read_password(password_file: str, environ: Mapping[str, str] | None = None) -> str:
    """The keystore password: ``password_file``'s first line if set, else ``STREAMGW_ETH_PASSWORD``."""
    environ = os.environ if environ is None else environ
    if password_file:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read eth_password_file {password_file}: {exc.strerror}") from None
        lines = text.splitlines()
        return lines[0] if lines else ""
    if PASSWORD_ENV in environ:
        return environ[PASSWORD_ENV]
    raise ConfigError(f"the keystore needs its password: set {PASSWORD_ENV} or eth_password_file")


def load_signer(keystore: str | Path, password: str) -> Signer:
    """The account in ``keystore``; a wrong password or a malformed file is a :class:`ConfigError`."""
    path = Path(keystore)
    try:
        raw = path.read_bytes()[: MAX_KEYSTORE_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read keystore {path}: {exc.strerror}") from None
    if len(raw) > MAX_KEYSTORE_BYTES:
        raise ConfigError(f"keystore {path} is larger than {MAX_KEYSTORE_BYTES} bytes")
    try:
        data = json.loads(raw)
        key = Account.decrypt(data, password)
    except ValueError as exc:
        # eth-account says "MAC mismatch" for a wrong password; nothing here may carry the password.
        raise ConfigError(f"cannot decrypt keystore {path}: {type(exc).__name__} (wrong password?)") from None
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"keystore {path} is not a Web3 Secret Storage file: missing {exc}") from None
    return Signer(bytes(key))


def new_keystore(path: str | Path, password: str, *, private_key: bytes | None = None,
                 iterations: int | None = None) -> str:
    """Write a new (or the given) key encrypted with ``password`` to ``path`` (mode 0600); its address.

    ``iterations`` lowers scrypt's cost for throw-away local chains (default: eth-account's).
    """
    account = Account.from_key(private_key) if private_key is not None else Account.create()
    encrypted = Account.encrypt(account.key, password, iterations=iterations)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(encrypted, f)
    return checksum_address(account.address)
