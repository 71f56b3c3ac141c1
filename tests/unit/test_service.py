"""Daemons under a service manager: journald priority prefixes, JSON logs, sd_notify's sibling."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from overlay.service import (
    JournalFormatter,
    JsonFormatter,
    setup_logging,
    syslog_priority,
    under_journal,
)


def _record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("dnsd.feed", level, __file__, 1, msg, (), exc_info)


@pytest.mark.parametrize(
    ("level", "prio"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
     (logging.DEBUG, 7), (5, 7)],
    ids=["critical", "error", "warning", "info", "debug", "below-debug"],
)
def test_syslog_priority(level: int, prio: int) -> None:
    assert syslog_priority(level) == prio


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    text = JournalFormatter().format(_record(logging.ERROR, "store lost", exc=True))
    lines = text.splitlines()
    assert lines[0] == "<3>dnsd.feed: store lost"
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)  # the traceback
    assert "RuntimeError: boom" in lines[-1]


def test_json_lines() -> None:
    doc = json.loads(JsonFormatter().format(_record(logging.WARNING, "slow", exc=True)))
    assert doc["level"] == "warning" and doc["logger"] == "dnsd.feed" and doc["msg"] == "slow"
    assert doc["time"].endswith("Z") and "T" in doc["time"]
    assert "RuntimeError: boom" in doc["exc"]


def test_under_journal_only_when_stderr_is_that_stream(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with open(path, "w") as f, open(tmp_path / "other", "w") as other:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(env, f)
        assert not under_journal(env, other)  # a redirected stderr is not the journal
        assert not under_journal({}, f)
        assert not under_journal({"JOURNAL_STREAM": "garbage"}, f)
        assert not under_journal(env, io.StringIO())


def test_setup_logging_replaces_only_its_own_handler(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    out = io.StringIO()
    try:
        setup_logging(logging.INFO, "json", {}, out)
        setup_logging(logging.INFO, "json", {}, out)
        ours = [h for h in root.handlers if type(h).__name__ == "_WeftHandler"]
        assert len(ours) == 1  # the second call replaced the first (and any earlier one)
        assert [h for h in root.handlers if h not in ours] == [
            h for h in before if type(h).__name__ != "_WeftHandler"]  # pytest's stay
        logging.getLogger("x").info("hello")
        assert json.loads(out.getvalue().splitlines()[-1])["msg"] == "hello"
        with pytest.raises(ValueError):
            setup_logging(logging.INFO, "xml", {}, out)
    finally:
        root.handlers[:] = before
        root.setLevel(level)
