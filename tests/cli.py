"""`lancang` admin commands run inside the test process: the same `main(argv)` the console
script calls, with the environment a child process would get and its stdout/stderr captured.

A child process costs about a second (imports, then full-cost argon2 for every password);
tests that issue dozens of commands run them here. Whether the real command starts, exits
with its code and prints no traceback is checked in real processes by
tests/lancang/test_cli.py::test_the_installed_command_exits_2_with_the_message_alone and
test_serve.py / test_edge_cli.py."""

from __future__ import annotations

import io
import logging
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

from lancang.cli import main
from storage.settings import get_settings


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers = list(root.handlers)
    get_settings.cache_clear()  # the process's settings are read once; these come from `env`
    with mock.patch.dict(os.environ, env, clear=True), redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            # main() configures logging onto this call's captured stream: leave none behind
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
            get_settings.cache_clear()
    done = subprocess.CompletedProcess(["lancang", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"lancang {' '.join(args)} -> {code}\n{done.stdout}\n{done.stderr}")
    return done
