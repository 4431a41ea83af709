"""The allocator tuning of pathseg.allocator: set where glibc is, skipped when asked, called by the command."""

import platform
import sys

import pytest

from pathseg.allocator import tune_allocator


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("PATHSEG_MALLOC", "system")
    assert tune_allocator() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc on Linux only"
)
def test_thresholds_are_set_on_glibc(monkeypatch):
    monkeypatch.delenv("PATHSEG_MALLOC", raising=False)
    assert tune_allocator() is True


def test_the_command_tunes_the_allocator_before_its_work(monkeypatch, capsys):
    import pathseg.cli

    calls = []
    monkeypatch.setattr(pathseg.cli, "tune_allocator", lambda: calls.append(1) or True)
    assert pathseg.cli.main(["models", "list"]) == 0 and calls == [1]
    assert "classical" in capsys.readouterr().out
