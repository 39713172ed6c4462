"""imaging/compat_pynetdicom.py: every private pynetdicom detail Lancang relies on is
checked at import, and a pynetdicom without one fails loudly."""

from __future__ import annotations

import pytest
from pynetdicom import AE, _config, dimse_messages

from imaging import compat_pynetdicom


def test_the_installed_pynetdicom_has_every_detail():
    compat_pynetdicom.check()


@pytest.mark.parametrize("break_it, named", [
    (lambda mp: mp.setattr(dimse_messages, "NamedTemporaryFile", object()), "NamedTemporaryFile"),
    (lambda mp: mp.setattr(_config, "VALIDATORS", {"AE": _config.VALIDATORS["AE"]}), "VALIDATORS"),
    (lambda mp: mp.setattr(compat_pynetdicom.inspect, "getsource", lambda obj: ""), "_run_loop_delay"),
    (lambda mp: mp.setattr(compat_pynetdicom, "Association", type("NotAThread", (), {})), "Thread"),
])
def test_a_missing_detail_fails_loudly(monkeypatch, break_it, named):
    break_it(monkeypatch)
    with pytest.raises(RuntimeError, match=named):
        compat_pynetdicom.check()


def test_register_server_lets_shutdown_stop_it():
    ae = AE()
    stopped = []
    server = type("Server", (), {"shutdown": lambda self: stopped.append(1), "server_close": lambda self: None})()
    compat_pynetdicom.register_server(ae, server)
    ae.shutdown()
    assert stopped == [1]


def test_negotiating_association_is_none_outside_an_association():
    assert compat_pynetdicom.negotiating_association() is None
