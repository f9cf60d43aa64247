"""Password checks of both authentication modules, with hashes made by libpass."""
from __future__ import annotations

import os

from passlib.hash import bcrypt, md5_crypt, sha256_crypt, sha512_crypt
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.daemon_support import temp_path
from txharp.daemon.auth import (
    Authenticator,
    InlineUsers,
    PasswordFile,
    database_from_config,
)
from txharp.daemon.config import AuthenticationConfig, ConfigError


def _bcrypt_available() -> bool:
    try:
        bcrypt.get_backend()
    except Exception:
        return False
    return True


HASHERS = {
    "sha512": sha512_crypt.using(rounds=5000),
    "sha256": sha256_crypt.using(rounds=5000),
    "md5": md5_crypt,
}
if _bcrypt_available():
    HASHERS["bcrypt"] = bcrypt.using(rounds=4)


class PasswordFileTests(TestCase):
    def write(self, text: str) -> str:
        path = temp_path(self)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_every_crypt_scheme(self) -> None:
        lines = [f"{name}:{hasher.hash('pw-' + name)}" for name, hasher in HASHERS.items()]
        db = PasswordFile(self.write("# users\n\n" + "\n".join(lines) + "\n"))
        for name in HASHERS:
            self.assertTrue(db.check(name, "pw-" + name), name)
            self.assertFalse(db.check(name, "wrong"), name)
            self.assertFalse(db.check(name, ""), name)
        self.assertFalse(db.check("nobody", "pw-md5"))
        self.assertEqual(db.users, tuple(sorted(HASHERS)))

    def test_bcrypt(self) -> None:
        if "bcrypt" not in HASHERS:
            raise self.skipTest("no bcrypt backend for libpass (pip install bcrypt)")
        db = PasswordFile(self.write(f"b:{HASHERS['bcrypt'].hash('x')}\n"))
        self.assertTrue(db.check("b", "x"))

    def test_shadow_style_fields_are_ignored(self) -> None:
        db = PasswordFile(self.write(f"alice:{HASHERS['sha512'].hash('s3cret')}:19000:0:99999:7:::\n"))
        self.assertTrue(db.check("alice", "s3cret"))

    def test_non_ascii_password(self) -> None:
        db = PasswordFile(self.write(f"alice:{HASHERS['sha512'].hash('zażółć')}\n"))
        self.assertTrue(db.check("alice", "zażółć"))
        self.assertFalse(db.check("alice", "zazolc"))

    def test_bad_lines_are_errors(self) -> None:
        for text, where in [
            ("alice\n", "line 1"),
            ("# c\nalice:not-a-hash\n", "line 2"),
            (":$1$abc$def\n", "line 1"),
        ]:
            error = self.assertRaises(ConfigError, PasswordFile, self.write(text))
            self.assertIn(where, str(error))

    def test_missing_file(self) -> None:
        error = self.assertRaises(ConfigError, PasswordFile, temp_path(self))
        self.assertIn("password file", str(error))

    def test_changed_file_is_read_again(self) -> None:
        path = self.write(f"alice:{HASHERS['md5'].hash('one')}\n")
        db = PasswordFile(path)
        with open(path, "w") as f:
            f.write(f"alice:{HASHERS['md5'].hash('two')}\nbob:{HASHERS['md5'].hash('three')}\n")
        os.utime(path, ns=(0, 1))  # a different stamp even within one clock tick
        self.assertTrue(db.check("alice", "two"))
        self.assertTrue(db.check("bob", "three"))

    def test_broken_edit_keeps_the_previous_users(self) -> None:
        path = self.write(f"alice:{HASHERS['md5'].hash('one')}\n")
        db = PasswordFile(path)
        with open(path, "w") as f:
            f.write("garbage\n")
        os.utime(path, ns=(0, 1))
        self.assertTrue(db.check("alice", "one"))


class InlineUsersTests(TestCase):
    def test_plain_and_crypt(self) -> None:
        db = InlineUsers(
            {"alice": "plain:s3cret", "bob": "crypt:" + HASHERS["sha512"].hash("b0b"),
             "carol": "plain:with:colons"}
        )
        self.assertTrue(db.check("alice", "s3cret"))
        self.assertFalse(db.check("alice", "s3cret "))
        self.assertFalse(db.check("alice", "S3cret"))
        self.assertTrue(db.check("bob", "b0b"))
        self.assertFalse(db.check("bob", "crypt:" + HASHERS["sha512"].hash("b0b")))
        self.assertTrue(db.check("carol", "with:colons"))
        self.assertFalse(db.check("dave", ""))

    def test_bad_entries_name_the_user(self) -> None:
        for spec in ["s3cret", "md5:x", "crypt:nonsense", 5]:
            error = self.assertRaises(ConfigError, InlineUsers, {"alice": spec})
            self.assertIn("authentication.users.alice", str(error))

    def test_from_config(self) -> None:
        db = database_from_config(AuthenticationConfig("inconfig", {"users": {"a": "plain:b"}}))
        self.assertTrue(db.check("a", "b"))


class AuthenticatorTests(TestCase):
    @inlineCallbacks
    def test_checks_run_in_a_thread(self) -> None:
        """Hashing is slow: hash checks (and unknown users) never block the reactor."""
        import threading

        from passlib.hash import sha256_crypt

        threads = []
        db = InlineUsers({"alice": "crypt:" + sha256_crypt.using(rounds=1000).hash("s3cret")})
        check = db.check

        def recording_check(user: str, password: str) -> bool:
            threads.append(threading.current_thread())
            return check(user, password)

        db.check = recording_check  # type: ignore[method-assign]
        auth = Authenticator(db, reactor)
        self.assertTrue((yield auth.authenticate("alice", "s3cret")))
        self.assertFalse((yield auth.authenticate("alice", "nope")))
        self.assertFalse((yield auth.authenticate("mallory", "s3cret")))
        self.assertNotIn(threading.main_thread(), threads)

    def test_plain_passwords_answer_at_once(self) -> None:
        """A constant-time comparison needs no trip to the thread pool."""
        auth = Authenticator(InlineUsers({"alice": "plain:s3cret"}), reactor)
        self.assertTrue(self.successResultOf(auth.authenticate("alice", "s3cret")))
        self.assertFalse(self.successResultOf(auth.authenticate("alice", "nope")))
