"""Tests for :mod:`txharp.proxy.hosts`, the hosts registry."""
from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txharp.proxy.hosts import (
    HostEntry,
    HostRefreshService,
    HostRegistry,
    parse_hosts,
)


def line(hostname: str, address: str = "10.0.0.5", password: str = "p", **extra: Any) -> bytes:
    """One registry line, credentials included."""
    value: Dict[str, Any] = {
        "hostname": hostname,
        "address": address,
        "credentials": {"user": "u", "password": password},
    }
    value.update(extra)
    return json.dumps(value).encode() + b"\n"


class ParseHostsTests(SynchronousTestCase):
    def test_good_lines(self) -> None:
        entries, errors = parse_hosts(
            line("web01") + b"\n   \n" + line("db01", "db.example", port=5000)
        )
        self.assertEqual(errors, [])
        self.assertEqual(
            entries,
            [
                HostEntry("web01", "10.0.0.5", 4306, "u", "p"),
                HostEntry("db01", "db.example", 5000, "u", "p"),
            ],
        )

    def test_crlf_and_no_final_newline(self) -> None:
        entries, errors = parse_hosts(line("a").replace(b"\n", b"\r\n") + line("b").strip())
        self.assertEqual(([e.hostname for e in entries], errors), (["a", "b"], []))

    def test_bad_lines(self) -> None:
        """Each bad line is reported with its number; the good ones still load."""
        good = line("good")
        bad = [
            b"not json at all",
            b'["a list"]',
            b"\xff\xfe not utf-8",
            json.dumps({"address": "x", "credentials": {"user": "u", "password": "p"}}).encode(),
            json.dumps({"hostname": "", "address": "x"}).encode(),
            json.dumps({"hostname": "h", "credentials": {"user": "u", "password": "p"}}).encode(),
            json.dumps({"hostname": "h", "address": "x"}).encode(),
            json.dumps({"hostname": "h", "address": "x", "credentials": {"user": "u"}}).encode(),
            json.dumps({"hostname": "h", "address": "x", "credentials": ["u", "p"]}).encode(),
        ] + [line("h", port=port).strip() for port in (0, 65536, "4306", True, 4306.0, None)]
        entries, errors = parse_hosts(good + b"\n".join(bad) + b"\n" + good)
        self.assertEqual([e.hostname for e in entries], ["good"])
        self.assertEqual([e.line for e in errors], list(range(2, 2 + len(bad))))
        messages = [e.message for e in errors]
        self.assertIn("not a JSON value", messages[0])
        self.assertEqual(messages[1], "not a JSON object")
        self.assertIn("UTF-8", messages[2])
        self.assertEqual(messages[3], "hostname must be a non-empty string")
        self.assertEqual(messages[4], "hostname must be a non-empty string")
        self.assertIn("address", messages[5])
        for message in messages[6:9]:
            self.assertIn("credentials", message)
        for message in messages[9:]:
            self.assertIn("port must be an integer from 1 to 65535", message)
        self.assertEqual(str(errors[0]), f"line 2: {messages[0]}")

    def test_later_duplicates_win(self) -> None:
        entries, errors = parse_hosts(line("a", "1.1.1.1") + line("b") + line("a", "2.2.2.2"))
        self.assertEqual(errors, [])
        self.assertEqual([(e.hostname, e.address) for e in entries],
                         [("a", "2.2.2.2"), ("b", "10.0.0.5")])

    def test_passwords_kept_private(self) -> None:
        """Neither an entry's repr nor a bad line's message shows the password."""
        entries, errors = parse_hosts(
            line("a", password="s3cret")
            + line("b", password="s3cret", port="nope")
            + b'{"hostname": "c", "credentials": {"password": "s3cret"'
        )
        self.assertNotIn("s3cret", repr(entries))
        self.assertEqual(len(errors), 2)
        self.assertNotIn("s3cret", repr(errors) + "".join(map(str, errors)))


class RecordedLog:
    """Collects the text of every log event while a test runs."""

    def __init__(self, test: TestCase) -> None:
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)


class HostRegistryTests(TestCase):
    """Real files and real processes, on the real reactor."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.hosts = os.path.join(self.dir, "hosts.json")
        self.script = os.path.join(self.dir, "hosts.py")

    def write_hosts(self, data: bytes) -> None:
        with open(self.hosts, "wb") as f:
            f.write(data)

    def write_script(self, body: str) -> List[str]:
        """A Python hosts script; returns its argv."""
        with open(self.script, "w") as f:
            f.write("import sys, time\n" + body + "\n")
        return [sys.executable, self.script]

    def print_hosts_script(self, data: bytes) -> List[str]:
        return self.write_script(f"sys.stdout.buffer.write({data!r})")

    def addresses(self, registry: HostRegistry) -> Dict[str, str]:
        return {entry.hostname: entry.address for entry in registry.entries()}

    async def test_file(self) -> None:
        self.write_hosts(line("web01") + line("db01", "10.0.0.9", port=4000))
        registry = HostRegistry(self.hosts)
        self.assertIsNone(registry.lookup("web01"))
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(registry.lookup("db01"), HostEntry("db01", "10.0.0.9", 4000, "u", "p"))
        self.assertIsNone(registry.lookup("WEB01"))
        self.write_hosts(line("web01", "10.0.0.6") + line("new"))
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(self.addresses(registry), {"web01": "10.0.0.6", "new": "10.0.0.5"})

    async def test_unreadable_file_keeps_registry(self) -> None:
        log = RecordedLog(self)
        registry = HostRegistry(self.hosts)
        self.assertIs(await registry.refresh(), False)
        self.assertEqual(registry.entries(), [])
        self.write_hosts(line("web01"))
        self.assertIs(await registry.refresh(), True)
        os.remove(self.hosts)
        self.assertIs(await registry.refresh(), False)
        self.assertEqual(self.addresses(registry), {"web01": "10.0.0.5"})
        self.assertIn("No such file or directory", log.text())
        self.assertIn("keeping the 1 hosts known", log.text())

    async def test_bad_lines_logged_without_passwords(self) -> None:
        log = RecordedLog(self)
        self.write_hosts(line("web01", password="s3cret") + line("bad", password="s3cret", port=0))
        registry = HostRegistry(self.hosts)
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(list(self.addresses(registry)), ["web01"])
        self.assertIn(f"hosts file {self.hosts}, line 2: host 'bad': port", log.text())
        self.assertNotIn("s3cret", log.text())

    async def test_many_bad_lines_logged_in_short(self) -> None:
        log = RecordedLog(self)
        self.write_hosts(line("web01") + b"garbage\n" * 25)
        registry = HostRegistry(self.hosts)
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(log.text().count("line skipped"), 10)
        self.assertIn("15 more bad lines skipped", log.text())

    async def test_script(self) -> None:
        registry = HostRegistry(hosts_script=self.print_hosts_script(line("web01") + line("x")))
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(self.addresses(registry), {"web01": "10.0.0.5", "x": "10.0.0.5"})

    async def test_shell_command(self) -> None:
        """A string is a shell command line."""
        argv = self.print_hosts_script(line("web01"))
        registry = HostRegistry(hosts_script=" ".join(map(shlex.quote, argv)) + " | cat")
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(list(self.addresses(registry)), ["web01"])

    async def test_script_overrides_file(self) -> None:
        self.write_hosts(line("both", "1.1.1.1") + line("file-only"))
        argv = self.print_hosts_script(line("both", "2.2.2.2") + line("script-only"))
        registry = HostRegistry(self.hosts, argv)
        self.assertIs(await registry.refresh(), True)
        self.assertEqual(
            self.addresses(registry),
            {"both": "2.2.2.2", "file-only": "10.0.0.5", "script-only": "10.0.0.5"},
        )

    async def test_failing_script_keeps_registry(self) -> None:
        log = RecordedLog(self)
        self.write_hosts(line("file-host"))
        registry = HostRegistry(self.hosts, self.print_hosts_script(line("web01")))
        self.assertIs(await registry.refresh(), True)
        before = registry.entries()
        self.write_script(
            f"sys.stdout.buffer.write({line('other')!r})\n"
            "sys.stderr.write('boom: database unreachable')\nsys.exit(3)"
        )
        self.write_hosts(line("changed-file-host"))
        self.assertIs(await registry.refresh(), False)
        self.assertEqual(registry.entries(), before)
        self.assertIn("exited with status 3; stderr: boom: database unreachable", log.text())

    async def test_script_timeout(self) -> None:
        registry = HostRegistry(
            hosts_script=self.print_hosts_script(line("web01")), script_timeout=0.5
        )
        self.assertIs(await registry.refresh(), True)
        log = RecordedLog(self)
        self.write_script("time.sleep(30)")
        self.assertIs(await registry.refresh(), False)
        self.assertEqual(list(self.addresses(registry)), ["web01"])
        self.assertIn("timed out after 0.5 s", log.text())

    async def test_script_killed_or_missing(self) -> None:
        log = RecordedLog(self)
        killed = HostRegistry(hosts_script=self.write_script("import os; os.kill(os.getpid(), 9)"))
        self.assertIs(await killed.refresh(), False)
        self.assertIn("killed by signal 9", log.text())
        missing = HostRegistry(hosts_script=[os.path.join(self.dir, "no-such-program")])
        self.assertIs(await missing.refresh(), False)
        self.assertIn("cannot start: No such file or directory", log.text())

    async def test_overlapping_refreshes(self) -> None:
        """Calls made during a refresh share one more run after it."""
        runs = os.path.join(self.dir, "runs")
        argv = self.write_script(
            f"open({runs!r}, 'a').write('x')\n"
            f"sys.stdout.buffer.write({line('web01')!r})"
        )
        registry = HostRegistry(hosts_script=argv)
        results = [registry.refresh(), registry.refresh(), registry.refresh()]
        self.assertEqual([await result for result in results], [True, True, True])
        with open(runs) as f:
            self.assertEqual(f.read(), "xx")

    def test_needs_a_source(self) -> None:
        self.assertRaises(ValueError, HostRegistry)
        self.assertRaises(ValueError, HostRegistry, hosts_script=[])


class FakeRegistry:
    """Counts refreshes; each one ends when the test fires its Deferred."""

    def __init__(self) -> None:
        self.calls: List[Deferred[bool]] = []

    def refresh(self) -> "Deferred[bool]":
        self.calls.append(Deferred())
        return self.calls[-1]


class HostRefreshServiceTests(TestCase):
    def test_periodic_refresh(self) -> None:
        clock = Clock()
        registry = FakeRegistry()
        service = HostRefreshService(registry, 60, clock)  # type: ignore[arg-type]
        service.startService()
        self.assertEqual(len(registry.calls), 1)
        registry.calls[0].callback(True)
        clock.advance(59)
        self.assertEqual(len(registry.calls), 1)
        clock.advance(1)
        self.assertEqual(len(registry.calls), 2)
        clock.advance(120)  # still running: no overlap
        self.assertEqual(len(registry.calls), 2)
        registry.calls[1].callback(False)  # a failed refresh does not stop the loop
        clock.advance(60)
        self.assertEqual(len(registry.calls), 3)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        registry.calls[2].callback(True)
        self.successResultOf(stopped)
        clock.advance(600)
        self.assertEqual(len(registry.calls), 3)

    async def test_reloads_the_file(self) -> None:
        """A real registry on a real file, its refreshes paced by a Clock."""
        hosts = self.mktemp()
        with open(hosts, "wb") as f:
            f.write(line("web01"))
        clock = Clock()
        registry = HostRegistry(hosts)
        refreshes: List[Deferred[bool]] = []
        refresh = registry.refresh

        def recording_refresh() -> Deferred[bool]:
            """Refresh, and pass the result on (the service's loop consumes it)
            once the loop has scheduled its next call."""
            result = refresh()
            seen: Deferred[bool] = Deferred()
            refreshes.append(seen)
            return result.addCallback(
                lambda replaced: reactor.callLater(0, seen.callback, replaced) and replaced
            )

        registry.refresh = recording_refresh  # type: ignore[method-assign]
        service = HostRefreshService(registry, 30, clock)
        service.startService()
        self.assertIs(await refreshes[0], True)
        self.assertIsNotNone(registry.lookup("web01"))
        with open(hosts, "wb") as f:
            f.write(line("web02"))
        clock.advance(30)
        self.assertIs(await refreshes[1], True)
        self.assertEqual([e.hostname for e in registry.entries()], ["web02"])
        await service.stopService()

    def test_interval_must_be_positive(self) -> None:
        self.assertRaises(ValueError, HostRefreshService, FakeRegistry(), 0)
