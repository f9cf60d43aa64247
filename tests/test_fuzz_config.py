"""Fuzzing harpd's configuration and credential checks (bad input → typed errors).

Whatever a configuration file holds, reading it either gives a
:class:`~txharp.daemon.config.DaemonConfig` or raises
:class:`~txharp.daemon.config.ConfigError` naming the problem; the
password database it describes either builds or raises ``ConfigError``;
and checking any user and password (JSON can carry lone surrogates) gives
True or False, never an exception.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests import strategies as S
from txharp.daemon.auth import InlineUsers, PasswordFile, database_from_config
from txharp.daemon.config import ConfigError, DaemonConfig, load_config, parse_config

#: The configuration's own words, so that generated documents often come
#: close to valid ones (and reach the deeper checks).
KEYS = st.sampled_from([
    "network", "address", "port", "certfile", "keyfile", "python", "path", "prepend",
    "append", "authentication", "module", "users", "file", "inconfig", "passfile",
    "harpd.auth.passfile", "harpd.auth.inconfig",
]) | st.text(max_size=8)

#: Any text JSON can carry, lone surrogates included (Hypothesis leaves them out).
ANY_TEXT = st.lists(
    st.characters() | st.sampled_from(["\ud800", "\udbff", "\udc80", "\udfff"]), max_size=12
).map("".join)

#: User entries of an inline configuration, mostly valid.
USER_SPECS = (
    ANY_TEXT.map(lambda text: "plain:" + text)
    | st.sampled_from(["crypt:$1$salt$Xiy1W8ywHvh/eDW6Rji/n.", "crypt:x", "pw"])
)

SCALARS = (
    st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=True)
    | KEYS | ANY_TEXT
    | st.sampled_from(["plain:pw", "crypt:$1$salt$Xiy1W8ywHvh/eDW6Rji/n.", "crypt:x", "plain:", "pw"])
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=20,
)


def _near_valid() -> Any:
    """Valid documents with one section replaced by anything."""
    return st.builds(
        lambda network, authentication, python: {
            k: v for k, v in (("network", network), ("authentication", authentication),
                              ("python", python)) if v is not ...},
        st.just({"certfile": "/c.pem"}) | DOCUMENTS,
        st.fixed_dictionaries({"module": st.just("inconfig"),
                               "users": st.dictionaries(ANY_TEXT, USER_SPECS, max_size=3)}) | DOCUMENTS,
        st.just(...) | DOCUMENTS,
    )


class ConfigFuzzTests(SynchronousTestCase):
    def check_document(self, data: Any) -> None:
        try:
            config = parse_config(data, base="/etc/harpd")
        except ConfigError as e:
            self.assertTrue(str(e))
            return
        self.assertIsInstance(config, DaemonConfig)
        try:
            database = database_from_config(config.authentication)
        except ConfigError as e:
            self.assertTrue(str(e))
            return
        for user in list(database.users)[:2] + ["nobody", "\ud800"]:
            for password in ("pw", "", "\ud800", "p\x00w"):
                self.assertIn(database.check(user, password), (True, False))
                self.assertIn(database.quick_check(user, password), (True, False, None))

    @S.ci_settings(300)
    @given(DOCUMENTS)
    def test_any_document(self, data: Any) -> None:
        self.check_document(data)

    @S.ci_settings(300)
    @given(_near_valid())
    def test_near_valid_documents(self, data: Any) -> None:
        self.check_document(data)

    @S.ci_settings(100)
    @given(st.binary(max_size=200) | DOCUMENTS.map(lambda d: yaml.safe_dump(d).encode("utf-8", "surrogatepass")))
    def test_any_file(self, content: bytes) -> None:
        """load_config reads any bytes as YAML: a config or ConfigError."""
        with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as f:
            f.write(content)
        self.addCleanup(os.unlink, f.name)
        try:
            self.assertIsInstance(load_config(f.name), DaemonConfig)
        except ConfigError as e:
            self.assertIn(f.name, str(e))

    @S.ci_settings(150)
    @given(st.binary(max_size=300), ANY_TEXT, ANY_TEXT)
    def test_any_password_file(self, content: bytes, user: str, password: str) -> None:
        with tempfile.NamedTemporaryFile("wb", delete=False) as f:
            f.write(content)
        self.addCleanup(os.unlink, f.name)
        try:
            database = PasswordFile(f.name)
        except ConfigError as e:
            self.assertIn(f.name, str(e))
            return
        self.assertIn(database.check(user, password), (True, False))

    @S.ci_settings(200)
    @given(ANY_TEXT, ANY_TEXT)
    def test_plain_passwords_compared_whatever_they_hold(self, stored: str, given_password: str) -> None:
        database = InlineUsers({"u": "plain:" + stored})
        self.assertIs(database.check("u", given_password), given_password == stored)
        self.assertIs(database.quick_check("u", given_password), given_password == stored)
