"""The YAML configuration: the original's format, defaults, and errors naming the key."""
from __future__ import annotations

import os
import textwrap
from typing import Any

import yaml
from twisted.trial.unittest import TestCase

from tests.daemon_support import temp_path
from txharp.daemon.config import (
    ConfigError,
    load_config,
    load_logging_config,
    parse_config,
)

ORIGINAL_STYLE = """\
network:
  #address: 127.0.0.1
  port: 4306
  certfile: /etc/harpd/harpd.cert.pem
  keyfile:  /etc/harpd/harpd.key.pem

authentication:
  module: harpd.auth.passfile
  file: /etc/harpd/users.txt
"""


def _config(**sections: Any) -> Any:
    data: Any = {
        "network": {"certfile": "/c.pem"},
        "authentication": {"module": "inconfig", "users": {"a": "plain:b"}},
    }
    data.update(sections)
    return data


class ConfigTests(TestCase):
    def write(self, text: str) -> str:
        directory = temp_path(self)
        os.makedirs(directory)
        path = os.path.join(directory, "harpd.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_original_style(self) -> None:
        config = load_config(self.write(ORIGINAL_STYLE))
        self.assertEqual(config.network.address, "127.0.0.1")
        self.assertEqual(config.network.port, 4306)
        self.assertEqual(config.network.certfile, "/etc/harpd/harpd.cert.pem")
        self.assertEqual(config.network.keyfile, "/etc/harpd/harpd.key.pem")
        self.assertEqual(config.authentication.module, "passfile")
        self.assertEqual(config.authentication.options, {"file": "/etc/harpd/users.txt"})
        self.assertEqual((config.python.prepend, config.python.append), ((), ()))

    def test_inline_users_original_name(self) -> None:
        config = parse_config(
            _config(authentication={"module": "harpd.auth.inconfig",
                                    "users": {"john": "plain:x", "jack": "crypt:$6$a$b"}})
        )
        self.assertEqual(config.authentication.module, "inconfig")
        self.assertEqual(config.authentication.options["users"]["john"], "plain:x")

    def test_short_module_aliases(self) -> None:
        config = parse_config(_config(authentication={"module": "passfile", "file": "/u"}))
        self.assertEqual(config.authentication.module, "passfile")

    def test_defaults(self) -> None:
        network = parse_config(_config()).network
        self.assertEqual((network.address, network.port, network.keyfile), ("127.0.0.1", 4306, "/c.pem"))

    def test_relative_paths_follow_the_config_file(self) -> None:
        path = self.write(
            "network: {certfile: c.pem, keyfile: k.pem}\n"
            "python: {path: {prepend: [lib], append: [/abs]}}\n"
            "authentication: {module: passfile, file: users}\n"
        )
        base = os.path.dirname(os.path.abspath(path))
        config = load_config(path)
        self.assertEqual(config.network.certfile, os.path.join(base, "c.pem"))
        self.assertEqual(config.network.keyfile, os.path.join(base, "k.pem"))
        self.assertEqual(config.authentication.options["file"], os.path.join(base, "users"))
        self.assertEqual(config.python.prepend, (os.path.join(base, "lib"),))
        self.assertEqual(config.python.append, ("/abs",))

    def test_python_path_list_is_prepended(self) -> None:
        config = parse_config(_config(python={"path": ["/a", "/b"]}))
        self.assertEqual((config.python.prepend, config.python.append), (("/a", "/b"), ()))

    def test_errors_name_the_key(self) -> None:
        cases = [
            (_config(network={"certfile": "/c", "port": "x"}), "network.port"),
            (_config(network={"certfile": "/c", "port": 70000}), "network.port"),
            (_config(network={"certfile": "/c", "port": True}), "network.port"),
            (_config(network={"port": 1}), "network.certfile"),
            (_config(network={"certfile": "/c", "adress": "x"}), "network.adress"),
            (_config(network=[1]), "network"),
            (_config(network={"certfile": "/c", "address": ""}), "network.address"),
            (_config(python={"path": "/x"}), "python.path"),
            (_config(python={"path": {"front": ["/x"]}}), "python.path.front"),
            (_config(authentication={"module": "harpd.auth.ldap"}), "authentication.module"),
            (_config(authentication={"module": ["x"]}), "authentication.module"),
            (_config(authentication={"module": "passfile"}), "authentication.file"),
            (_config(authentication={"module": "passfile", "file": "/u", "users": {}}),
             "authentication.users"),
            (_config(authentication={"module": "inconfig", "users": ["a"]}), "authentication.users"),
            (_config(authentication=None), "authentication"),
            (_config(extra={}), "extra"),
            ([], "expected a mapping"),
        ]
        for data, key in cases:
            error = self.assertRaises(ConfigError, parse_config, data)
            self.assertTrue(str(error).startswith(key), f"{key!r} not first in {error}")

    def test_file_errors_name_the_file(self) -> None:
        missing = self.assertRaises(ConfigError, load_config, "/nonexistent/harpd.conf")
        self.assertIn("/nonexistent/harpd.conf", str(missing))
        path = self.write("network: [\n")
        self.assertIn("not valid YAML", str(self.assertRaises(ConfigError, load_config, path)))
        path = self.write("network: {certfile: c, port: -1}\nauthentication: {module: inconfig, users: {}}\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(path, str(error))
        self.assertIn("network.port", str(error))

    def test_logging_config(self) -> None:
        text = textwrap.dedent(
            """\
            version: 1
            root: {level: NOTSET, handlers: [stderr]}
            handlers:
              stderr: {class: logging.StreamHandler, stream: "ext://sys.stderr"}
            """
        )
        self.assertEqual(load_logging_config(self.write(text)), yaml.safe_load(text))
        error = self.assertRaises(ConfigError, load_logging_config, self.write("root: {}\n"))
        self.assertIn("version", str(error))


class ExampleTests(TestCase):
    """The files under examples/ stay valid."""

    EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

    def test_example_configuration(self) -> None:
        config = load_config(os.path.join(self.EXAMPLES, "harpd.yaml"))
        self.assertEqual((config.network.address, config.network.port), ("127.0.0.1", 4306))
        self.assertEqual(config.authentication.module, "passfile")

    def test_example_procedures(self) -> None:
        from txharp.daemon.procedures import ProcedureRegistry, load_procedures_module, run_procedure

        registry = ProcedureRegistry.from_module(
            load_procedures_module(os.path.join(self.EXAMPLES, "procedures.py"))
        )
        self.assertEqual(
            sorted(registry), ["countdown", "disk_usage", "hostname", "load", "slow_echo"]
        )
        packets: list = []
        result = run_procedure(registry["countdown"].target, {"start": 2, "interval": 0}, packets.append)
        self.assertEqual((packets, result), ([{"n": 2}, {"n": 1}], "liftoff"))
