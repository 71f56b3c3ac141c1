"""Unit-file parsing: systemd syntax, [X-Fleet]/[X-Weft] options, names, specifiers, refusals."""

from __future__ import annotations

import pytest

from overlay.sched.errors import UnitFileError
from overlay.sched.unitfile import (
    ExecCommand,
    ServiceName,
    parse_entries,
    parse_service,
    parse_timespan,
    parse_unit,
    parse_unit_name,
    split_words,
)

WEB = """\
# a comment
; another
[Unit]
Description=web server %i

[Service]
ExecStartPre=-/bin/rm -f /tmp/%p.pid
ExecStart=/usr/bin/python3 -m http.server \\
    # comments inside a continuation are skipped
    8000
ExecStop=/bin/kill $MAINPID
Environment="GREETING=hello world" NAME=%n
Environment=MORE=1
Restart=on-failure
RestartSec=1min 30s

[X-Fleet]
MachineMetadata="region=us" region=eu
MachineMetadata=disk=ssd
Conflicts=web@*.service
Conflicts=db*.service

[X-Weft]
Network=yes
Service=Web:8000
"""


def test_full_file_instance() -> None:
    u = parse_unit("web@1.service", WEB, "web@.service")
    assert u.description == "web server 1"
    assert u.exec_start_pre == (ExecCommand(("/bin/rm", "-f", "/tmp/web.pid"), True),)
    assert u.exec_start == (ExecCommand(("/usr/bin/python3", "-m", "http.server", "8000")),)
    assert u.exec_stop == (ExecCommand(("/bin/kill", "$MAINPID")),)
    assert u.environment == {"GREETING": "hello world", "NAME": "web@1.service", "MORE": "1"}
    assert (u.restart, u.restart_sec) == ("on-failure", 90.0)
    assert u.fleet.metadata == {"region": frozenset({"us", "eu"}), "disk": frozenset({"ssd"})}
    assert u.fleet.conflicts == ("web@*.service", "db*.service")
    assert u.weft.network is True
    assert u.weft.service == ServiceName("web", 8000)
    assert u.values("Service", "Environment") == ('"GREETING=hello world" NAME=%n', "MORE=1")


def test_defaults() -> None:
    u = parse_unit("a.service", "[Service]\nExecStart=/bin/true\n", "a.service")
    assert (u.restart, u.restart_sec, u.service_type) == ("no", 0.1, "simple")
    assert u.fleet.machine_id is None and not u.fleet.global_ and u.weft.service is None


@pytest.mark.parametrize(("name", "text", "check"), [
    ("a.service", "[X-Fleet]\nMachineID=abc123\n", lambda u: u.fleet.machine_id == "abc123"),
    ("a.service", "[X-Fleet]\nMachineOf=b.service c.service\n",
     lambda u: u.fleet.machine_of == ("b.service", "c.service")),
    ("a@2.service", "[X-Fleet]\nMachineOf=db@%i.service\n",
     lambda u: u.fleet.machine_of == ("db@2.service",)),
    ("a.service", "[X-Fleet]\nGlobal=true\nMachineMetadata=role=edge\n",
     lambda u: u.fleet.global_ and u.fleet.metadata == {"role": frozenset({"edge"})}),
    ("a.service", "[X-Fleet]\nReplaces=old*.service\n",
     lambda u: u.fleet.replaces == ("old*.service",)),
    ("a.service", "[X-Fleet]\nX-ConditionMachineMetadata=k=v\nX-Conflicts=b.service\n",
     lambda u: u.fleet.metadata == {"k": frozenset({"v"})} and u.fleet.conflicts == ("b.service",)),
    ("a.service", "[X-Weft]\nService=api.prod\n",
     lambda u: u.weft.service == ServiceName("api.prod", None)),
    ("a.service", "[X-Weft]\nNetwork=0\n", lambda u: u.weft.network is False),
    ("x@y.service", "[Unit]\nDescription=%n %N %p %i %% %H\n",
     lambda u: u.description == "x@y.service x@y x y % %H"),
    ("a.service", "[Service]\nExecStart=/a\nExecStart=\nExecStart=/b\n",
     lambda u: u.exec_start == (ExecCommand(("/b",)),)),
    ("a.service", "[Service]\nExecStart=@/bin/sh shname -c 'echo \"hi there\"'\n",
     lambda u: u.exec_start == (ExecCommand(("/bin/sh", "-c", 'echo "hi there"')),)),
    ("a.service", "[Unit]\nFoo=bar\n[Install]\nWantedBy=multi-user.target\n",
     lambda u: u.values("Install", "WantedBy") == ("multi-user.target",)),
    ("a@.service", "[X-Fleet]\nMachineOf=db@%i.service\n[X-Weft]\nService=web-%i\n",
     lambda u: u.unit.is_template),
], ids=["machine-id", "machine-of-two", "machine-of-specifier", "global-with-metadata",
        "replaces-glob", "fleet-legacy-names", "service-dotted-no-port", "network-false",
        "specifiers", "empty-exec-resets", "exec-at-prefix-and-quotes", "other-sections-kept",
        "template-checked-with-sample-instance"])
def test_options(name: str, text: str, check: object) -> None:
    u = parse_unit(name, text, "f")
    assert callable(check) and check(u), u


@pytest.mark.parametrize(("name", "text", "line", "key", "words"), [
    ("a.service", "[Unit]\nDescription=x\nthis is not an assignment\n", 3, "", "syntax error"),
    ("a.service", "[Unit\nDescription=x\n", 1, "", "section header"),
    ("a.service", "Description=x\n", 1, "Description", "outside of any section"),
    ("a.service", "[Unit]\nbad key=x\n", 2, "bad key", "bad key name"),
    ("a.service", "[X-Fleet]\nMachineIDs=x\n", 2, "MachineIDs", "unknown [X-Fleet] option"),
    ("a.service", "[X-Weft]\nDNS=x\n", 2, "DNS", "unknown [X-Weft] option"),
    ("a.service", "[X-Weft]\nService=web:http\n", 2, "Service", "port"),
    ("a.service", "[X-Weft]\nService=web:70000\n", 2, "Service", "port"),
    ("a.service", "[X-Weft]\nService=we_b\n", 2, "Service", "DNS labels"),
    ("a.service", "[X-Weft]\nService=\n", 2, "Service", "DNS labels"),
    ("a.service", "[X-Weft]\nNetwork=maybe\n", 2, "Network", "not a boolean"),
    ("a.service", "[X-Fleet]\nGlobal=sometimes\n", 2, "Global", "not a boolean"),
    ("a.service", "[X-Fleet]\nGlobal=true\nMachineOf=b.service\n", 3, "MachineOf",
     "Global unit"),
    ("a.service", "[X-Fleet]\nMachineOf=a.service\n", 2, "MachineOf", "itself"),
    ("a.service", "[X-Fleet]\nMachineOf=not-a-unit\n", 2, "MachineOf", "unit type"),
    ("a.service", "[X-Fleet]\nMachineMetadata=region\n", 2, "MachineMetadata", "key=value"),
    ("a.service", "[X-Fleet]\nConflicts=web[1.service\n", 2, "Conflicts", "unterminated"),
    ("a.service", "[X-Fleet]\nMachineID=a b\n", 2, "MachineID", "one machine id"),
    ("a.service", '[Service]\nExecStart=/bin/echo "unbalanced\n', 2, "ExecStart", "quote"),
    ("a.service", "[Service]\nRestart=sometimes\n", 2, "Restart", "one of"),
    ("a.service", "[Service]\nRestartSec=soon\n", 2, "RestartSec", "time span"),
    ("a.service", "[Service]\nEnvironment=NOEQUALS\n", 2, "Environment", "VAR=value"),
    ("a.service", "[Service]\nExecStart=-\n", 2, "ExecStart", "no executable"),
    ("bad name.service", "[Unit]\n", 0, "", "may hold only"),
    ("noext", "[Unit]\n", 0, "", "unit type"),
    ("a.exe", "[Unit]\n", 0, "", "unit type"),
    ("@x.service", "[Unit]\n", 0, "", "empty prefix"),
], ids=["syntax-error", "unclosed-section", "key-before-section", "blank-in-key",
        "unknown-fleet-key", "unknown-weft-key", "service-port-word", "service-port-range",
        "service-bad-label", "service-empty", "network-not-bool", "global-not-bool",
        "global-with-machine-of", "machine-of-self", "machine-of-not-unit", "metadata-no-eq",
        "glob-unterminated", "machine-id-two-words", "exec-unbalanced-quote", "restart-bad",
        "restart-sec-bad", "environment-no-eq", "exec-only-prefix", "name-blank",
        "name-no-type", "name-bad-type", "name-empty-prefix"])
def test_refused_naming_file_line_key(name: str, text: str, line: int, key: str,
                                      words: str) -> None:
    with pytest.raises(UnitFileError) as info:
        parse_unit(name, text, "/srv/units/" + name)
    err = info.value
    assert (err.source, err.line, err.key) == ("/srv/units/" + name, line, key)
    assert words in err.message
    assert str(err).startswith(f"/srv/units/{name}")


@pytest.mark.parametrize(("name", "prefix", "instance", "template"), [
    ("web.service", "web", None, "web.service"),
    ("web@.service", "web", "", "web@.service"),
    ("web@1.service", "web", "1", "web@.service"),
    ("a:b_c\\x2d.socket", "a:b_c\\x2d", None, "a:b_c\\x2d.socket"),
], ids=["plain", "template", "instance", "escaped-chars"])
def test_unit_names(name: str, prefix: str, instance: str | None, template: str) -> None:
    n = parse_unit_name(name)
    assert (n.prefix, n.instance, n.template) == (prefix, instance, template)
    assert n.is_template == (instance == "") and n.is_instance == bool(instance)


@pytest.mark.parametrize("name", ["a@b@c.service", "a/b.service", "x" * 300 + ".service", ""],
                         ids=["two-ats", "slash", "too-long", "empty"])
def test_bad_unit_names(name: str) -> None:
    with pytest.raises(ValueError):
        parse_unit_name(name)


@pytest.mark.parametrize(("value", "words"), [
    ('a "b c" d', ("a", "b c", "d")),
    ("'x y'z", ("x yz",)),
    (r"a\ b c\n", ("a b", "c\n")),
    ('  ""  ', ("",)),
    ("", ()),
], ids=["double-quotes", "single-quotes-joined", "escapes", "empty-quoted", "nothing"])
def test_split_words(value: str, words: tuple[str, ...]) -> None:
    assert split_words(value) == words


@pytest.mark.parametrize(("value", "seconds"), [
    ("5", 5.0), ("500ms", 0.5), ("1min 30s", 90.0), ("2h", 7200.0), ("1.5s", 1.5),
], ids=["bare", "ms", "compound", "hours", "fraction"])
def test_timespan(value: str, seconds: float) -> None:
    assert parse_timespan(value) == pytest.approx(seconds)


def test_continuation_at_eof_and_line_numbers() -> None:
    entries = parse_entries("[A]\nX=1 \\\n  2\nY=3 \\", "f")
    assert [(e.key, e.value, e.line) for e in entries] == [("X", "1 2", 2), ("Y", "3", 4)]


def test_service_name_str() -> None:
    assert str(parse_service("web:80")) == "web:80" and str(parse_service("web")) == "web"
