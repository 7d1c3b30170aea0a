"""The registrar retries what a kubelet can cause, and not a bug: a programming error is
logged once at ERROR with its traceback and leaves the resource pending."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from smarter_device_manager.deviceplugin.registrar import Registrar, Registration


def registrar_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   failures: list[Exception]) -> tuple[Registrar, list[bool], list[int]]:
    (tmp_path / "kubelet.sock").touch()  # the kubelet is there
    results: list[bool] = []
    registrar = Registrar(str(tmp_path), lambda _registration, ok: results.append(ok))
    calls = [0]

    async def register(registration: Registration) -> None:
        calls[0] += 1
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(registrar, "_register", register)
    return registrar, results, calls


async def registered_or_given_up(registrar: Registrar, name: str) -> None:
    registrar.request(name, "x.sock")
    await asyncio.wait_for(registrar._tasks[name], 30)


def test_a_programming_error_is_logged_once_and_not_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    registrar, results, calls = registrar_with(tmp_path, monkeypatch, [TypeError("bad argument")])
    with caplog.at_level(logging.DEBUG, logger="smarter_device_manager"):
        asyncio.run(registered_or_given_up(registrar, "d/x"))
    assert calls == [1] and results == [False]
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "internal error" in record.getMessage()
    assert registrar.pending() == ["d/x"]
    assert registrar.registrations["d/x"].last_error == "internal error: TypeError: bad argument"


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "Connection refused"),
                                   asyncio.TimeoutError()])
def test_what_a_kubelet_can_cause_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        error: Exception) -> None:
    registrar, results, calls = registrar_with(tmp_path, monkeypatch, [error])
    with caplog.at_level(logging.DEBUG, logger="smarter_device_manager"):
        asyncio.run(registered_or_given_up(registrar, "d/x"))
    assert calls == [2] and results == [False, True]
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and "attempt 1" in warning.getMessage()
    assert registrar.pending() == []
