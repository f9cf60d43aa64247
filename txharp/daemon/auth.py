"""Checking a request's user and password, as the original harpd's two modules did.

Two password databases:

* :class:`PasswordFile` (``harpd.auth.passfile``, alias ``passfile``): a file
  of ``user:HASH`` lines, HASH a crypt(3) string: SHA-512 (``$6$``), SHA-256
  (``$5$``), MD5 (``$1$``), bcrypt (``$2b$``, ``$2a$``, ``$2y$``) or
  traditional DES.  Blank lines and ``#`` comments are skipped; fields after
  a second colon are ignored (so ``/etc/shadow``-style lines work).  The file
  is read at startup and read again whenever it changes.
* :class:`InlineUsers` (``harpd.auth.inconfig``, alias ``inconfig``): users
  in the configuration, ``name: "plain:PASSWORD"`` or ``name: "crypt:HASH"``.

Hashes are checked with libpass (``passlib.hash``), not the ``crypt`` module
that Python 3.13 removed; plain passwords are compared in constant time.
Hashing is deliberately slow, so :class:`Authenticator` runs hash checks in a
thread pool and never blocks the reactor; a plain password is compared at
once (a constant-time comparison costs microseconds, far less than a trip
to the pool).  Passwords are never logged.
"""
from __future__ import annotations

import hmac
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from passlib.context import CryptContext
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from txharp.daemon.config import AuthenticationConfig, ConfigError

__all__ = [
    "CRYPT_SCHEMES",
    "PasswordDatabase",
    "PasswordFile",
    "InlineUsers",
    "Authenticator",
    "database_from_config",
]

_log = Logger()

#: The crypt(3) formats accepted for stored hashes.
CRYPT_SCHEMES = ("sha512_crypt", "sha256_crypt", "md5_crypt", "bcrypt", "des_crypt")
_CRYPT = CryptContext(schemes=list(CRYPT_SCHEMES))


def _check_hash(stored: str, where: str) -> str:
    """Return ``stored`` if it is a crypt(3) hash libpass can verify, else raise ConfigError."""
    if _CRYPT.identify(stored) is None:
        raise ConfigError(
            f"{where}: not a supported crypt(3) hash (expected SHA-512 $6$, SHA-256 $5$, "
            "MD5 $1$, bcrypt $2b$ or DES)"
        )
    return stored


def _verify_hash(password: str, stored: str) -> bool:
    try:
        return bool(_CRYPT.verify(password, stored))
    except (ValueError, TypeError):
        return False


def _verify_plain(password: str, stored: str) -> bool:
    # JSON can carry lone surrogates ("\ud800"), which UTF-8 cannot: such a
    # password is compared like any other instead of raising.
    return hmac.compare_digest(
        password.encode("utf-8", "surrogatepass"), stored.encode("utf-8", "surrogatepass")
    )


class PasswordDatabase:
    """Users and their password checks; :meth:`check` may be called from any thread."""

    def __init__(self, checks: Mapping[str, Callable[[str], bool]]) -> None:
        self._checks = dict(checks)

    @property
    def users(self) -> Tuple[str, ...]:
        """The known user names."""
        return tuple(sorted(self._checks))

    def check(self, user: str, password: str) -> bool:
        """True when ``user`` exists and ``password`` is theirs."""
        check = self._checks.get(user)
        return check is not None and check(password)

    def quick_check(self, user: str, password: str) -> Optional[bool]:
        """:meth:`check` if it is cheap for ``user`` (a plain password),
        None when it needs the slow path (a hash, an unknown user, a file
        that may have changed)."""
        check = self._checks.get(user)
        if check is not None and isinstance(check, _PlainCheck):
            return check(password)
        return None


def _hash_check(stored: str) -> Callable[[str], bool]:
    return lambda password: _verify_hash(password, stored)


class _PlainCheck:
    """A plain password's check: a constant-time comparison, cheap enough for the reactor."""

    __slots__ = ("_stored",)

    def __init__(self, stored: str) -> None:
        self._stored = stored

    def __call__(self, password: str) -> bool:
        return _verify_plain(password, self._stored)


def _plain_check(stored: str) -> Callable[[str], bool]:
    return _PlainCheck(stored)


class PasswordFile(PasswordDatabase):
    """``user:HASH`` lines from ``path``, re-read when the file changes.

    A file that cannot be read or holds a bad line raises
    :class:`~txharp.daemon.config.ConfigError` at construction; later, a
    broken edit is logged and the previous contents stay in force.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = self._stat()
        super().__init__(self._parse())

    def _stat(self) -> Tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise ConfigError(f"password file {self.path}: {e.strerror or e}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _parse(self) -> Dict[str, Callable[[str], bool]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"password file {self.path}: {e}") from None
        checks = {}
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, rest = line.partition(":")
            where = f"password file {self.path}, line {number}"
            if not colon or not user:
                raise ConfigError(f"{where}: expected user:HASH")
            checks[user] = _hash_check(_check_hash(rest.split(":", 1)[0], where))
        return checks

    def check(self, user: str, password: str) -> bool:
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp  # a broken version is reported once, not per call
                self._checks = self._parse()
                _log.info("password file {path} reloaded", path=self.path)
        except ConfigError as e:
            _log.error("keeping the previous users: {error}", error=str(e))
        return super().check(user, password)

    def quick_check(self, user: str, password: str) -> Optional[bool]:
        """Never: the file is checked for changes (a blocking stat) first."""
        return None


class InlineUsers(PasswordDatabase):
    """Users from the configuration: ``{name: "plain:PW" | "crypt:HASH"}``."""

    def __init__(self, users: Mapping[str, Any]) -> None:
        checks = {}
        for user, spec in users.items():
            where = f"authentication.users.{user}"
            if not isinstance(spec, str):
                raise ConfigError(f"{where}: expected \"plain:PASSWORD\" or \"crypt:HASH\"")
            scheme, colon, secret = spec.partition(":")
            if colon and scheme == "plain":
                checks[str(user)] = _plain_check(secret)
            elif colon and scheme == "crypt":
                checks[str(user)] = _hash_check(_check_hash(secret, where))
            else:
                raise ConfigError(f"{where}: expected \"plain:PASSWORD\" or \"crypt:HASH\"")
        super().__init__(checks)


def database_from_config(config: AuthenticationConfig) -> PasswordDatabase:
    """The database the configuration's ``authentication`` section describes."""
    if config.module == "passfile":
        return PasswordFile(config.options["file"])
    return InlineUsers(config.options["users"])


class Authenticator:
    """Checks credentials off the reactor thread.

    :param database: where users and passwords come from
    :param reactor: the reactor results are delivered in
    :param threadpool: where checks run; the reactor's own pool by default
    """

    def __init__(
        self,
        database: PasswordDatabase,
        reactor: IReactorFromThreads,
        threadpool: Optional[ThreadPool] = None,
    ) -> None:
        self.database = database
        self._reactor = reactor
        self._threadpool = threadpool

    def authenticate(self, user: str, password: str) -> "Deferred[bool]":
        """Fire with True if the password is right for ``user``."""
        quick = self.database.quick_check(user, password)
        if quick is not None:
            return succeed(quick)
        pool = self._threadpool or self._reactor.getThreadPool()  # type: ignore[attr-defined]
        return deferToThreadPool(self._reactor, pool, self.database.check, user, password)
