"""Tests of ``twistd harp-proxy``'s options, its harpcaller.toml reading and its plugin."""
from __future__ import annotations

import os
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txharp.proxy.service import DEFAULT_LISTEN, ProxyService, default_data_dir
from txharp.proxy.tap import Options, listen_description, makeService
from txharp.testing.certs import TestPKI


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.hosts = os.path.join(self.directory, "hosts.json")
        with open(self.hosts, "w") as f:
            f.write('{"hostname": "h1", "address": "127.0.0.1", "credentials": {"user": "u", "password": "p"}}\n')

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        config = self.parse("--hosts", self.hosts).config
        self.assertEqual(config.listen, [DEFAULT_LISTEN])
        self.assertEqual(DEFAULT_LISTEN, "tcp:3502:interface=127.0.0.1")
        self.assertEqual((config.default_timeout, config.max_exec_time), (600, 600))
        self.assertEqual(config.max_age, 720 * 3600)
        self.assertEqual(config.data_dir, default_data_dir())
        self.assertEqual((config.tls_minimum, config.ca_file, config.known_certs), ("1.2", None, None))
        self.assertIsNone(config.admin_socket)
        self.assertEqual(config.hosts_file, self.hosts)

    def test_no_options_at_all(self) -> None:
        """``twistd -n harp-proxy`` alone starts, with an empty hosts registry."""
        config = self.parse().config
        self.assertEqual(config.listen, [DEFAULT_LISTEN])
        self.assertEqual((config.hosts_file, config.hosts_script), (None, None))

    def test_default_data_dir_follows_xdg(self) -> None:
        self.patch(os, "environ", {"XDG_STATE_HOME": "/srv/state", "HOME": "/home/x"})
        self.assertEqual(default_data_dir(), "/srv/state/harp-proxy")
        self.patch(os, "environ", {"HOME": "/home/x"})
        self.assertEqual(default_data_dir(), "/home/x/.local/state/harp-proxy")

    def test_every_option(self) -> None:
        pki = TestPKI(self.directory)
        config = self.parse(
            "--listen", "tcp:4000:interface=127.0.0.1", "--listen", "127.0.0.2:4001",
            "--hosts", self.hosts, "--hosts-script", "echo", "--hosts-refresh", "90",
            "--data-dir", "/var/lib/x", "--default-timeout", "30", "--max-exec-time", "120",
            "--max-age", "2", "--ca-file", pki.ca_file, "--known-certs", pki.cert_file,
            "--tls-minimum", "1.0", "--admin-socket", "/run/x.sock",
        ).config
        self.assertEqual(config.listen, ["tcp:4000:interface=127.0.0.1", "tcp:4001:interface=127.0.0.2"])
        self.assertEqual((config.hosts_script, config.hosts_refresh), ("echo", 90))
        self.assertEqual((config.data_dir, config.default_timeout, config.max_exec_time, config.max_age),
                         ("/var/lib/x", 30, 120, 7200))
        self.assertEqual((config.tls_minimum, config.admin_socket), ("1.0", "/run/x.sock"))
        policy = config.tls_policy()
        self.assertEqual((policy.ca_file, policy.pins, policy.minimum_version, policy.check_hostname),
                         (pki.ca_file, frozenset({pki.fingerprint}), "1.0", True))

    def test_max_age_zero_keeps_jobs(self) -> None:
        self.assertIsNone(self.parse("--hosts", self.hosts, "--max-age", "0").config.max_age)

    def test_errors(self) -> None:
        for argv in (
            ["--hosts", self.hosts, "--tls-minimum", "1.4"],
            ["--hosts", self.hosts, "--default-timeout", "0"],
            ["--hosts", self.hosts, "--max-age", "-1"],
            ["--hosts", self.hosts, "--ca-file", os.path.join(self.directory, "missing.pem")],
            ["--hosts", self.hosts, "--listen", "nonsense"],
            ["--hosts", self.hosts, "--config", os.path.join(self.directory, "missing.toml")],
        ):
            with self.assertRaises(usage.UsageError, msg=argv):
                self.parse(*argv)

    def test_listen_addresses(self) -> None:
        self.assertEqual(listen_description("*:3502"), "tcp:3502")
        self.assertEqual(listen_description("localhost:3502"), "tcp:3502:interface=localhost")
        self.assertEqual(listen_description("[::1]:3502"), r"tcp:3502:interface=\:\:1")
        self.assertEqual(listen_description("unix:/run/harp.sock"), "unix:/run/harp.sock")

    def test_harpcaller_toml(self) -> None:
        pki = TestPKI(self.directory)
        toml = self.write("harpcaller.toml", f"""
# network
listen = ["127.0.0.1:3503", "*:3504"]
ca_file = "{pki.ca_file}"
known_certs_file = "{pki.cert_file}"

# jobs
stream_directory = "/var/lib/harpcaller/stream/"
default_timeout = 300
max_exec_time = 900
max_age = 24

# hosts registry
host_db_script = "/etc/harpcaller/update-hosts"
host_db = "/var/lib/harpcaller/hosts.db"
host_db_refresh = 900

log_handlers = ["harpcaller_syslog_h"]

[erlang]
node_name = "harpcaller"
""")
        config = self.parse("--config", toml).config
        self.assertEqual(config.listen, ["tcp:3503:interface=127.0.0.1", "tcp:3504"])
        self.assertEqual((config.ca_file, config.known_certs), (pki.ca_file, pki.cert_file))
        self.assertEqual(config.data_dir, "/var/lib/harpcaller/stream/")
        self.assertEqual((config.default_timeout, config.max_exec_time, config.max_age), (300, 900, 24 * 3600))
        self.assertEqual((config.hosts_script, config.hosts_refresh), ("/etc/harpcaller/update-hosts", 900))
        # The command line wins over the file.
        config = self.parse("--config", toml, "--default-timeout", "5", "--listen", "tcp:1:interface=127.0.0.1",
                            "--hosts", self.hosts).config
        self.assertEqual((config.default_timeout, config.listen), (5, ["tcp:1:interface=127.0.0.1"]))
        self.assertEqual((config.hosts_file, config.hosts_script), (self.hosts, "/etc/harpcaller/update-hosts"))

    def test_bad_toml(self) -> None:
        for text in ('listen = "*:3502"\nhost_db_script = "x"\n', "max_age = -1\n", "default_timeout = 'x'\n",
                     "not toml at all ["):
            with self.assertRaises(usage.UsageError, msg=text):
                self.parse("--hosts", self.hosts, "--config", self.write("bad.toml", text))

    def test_make_service(self) -> None:
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())
        options = self.parse("--hosts", self.hosts, "--data-dir", os.path.join(self.directory, "data"))
        service = makeService(options)
        self.assertIsInstance(service, ProxyService)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "data")))  # created when started
        self.assertAlmostEqual(sys.getswitchinterval(), 0.0002)
        makeService(self.parse("--hosts", self.hosts, "--switch-interval", "5"))
        self.assertAlmostEqual(sys.getswitchinterval(), 0.005)
        for bad in ("0", "-1", "x"):
            with self.assertRaises(usage.UsageError, msg=bad):
                self.parse("--hosts", self.hosts, "--switch-interval", bad)


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        import twisted.plugins

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("harp-proxy", makers)
        self.assertIsInstance(makers["harp-proxy"].options(), Options)
