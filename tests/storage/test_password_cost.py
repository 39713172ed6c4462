"""The cheap password hashing of tests/conftest.py stays in the test process: the product
hashes with argon2id at argon2-cffi's RFC 9106 low-memory cost."""

from __future__ import annotations

import subprocess
import sys


def test_the_product_hashes_passwords_at_full_cost():
    probe = ("from storage import identity; h = identity._hasher; "
             "print(h.time_cost, h.memory_cost, h.parallelism, h.type.name)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    time_cost, memory_cost, parallelism, kind = done.stdout.split()
    assert int(time_cost) >= 3 and int(memory_cost) >= 65536 and int(parallelism) >= 4 and kind == "ID"


def test_a_hash_made_here_is_verified_and_upgraded_by_the_product(tmp_path):
    from storage import identity

    cheap = identity._hasher.hash("password-1")
    probe = ("import sys; from storage import identity; h = identity._hasher; "
             f"h.verify({cheap!r}, 'password-1'); print(h.check_needs_rehash({cheap!r}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "True"  # a user signing in to the product gets a full-cost hash


def test_the_web_app_makes_the_dummy_hash_at_start(tmp_path):
    """Else the first sign-in with an unknown username would take a hash longer than one with a
    known username, and tell an attacker so."""
    from fastapi.testclient import TestClient

    from storage import identity
    from tests.conftest import embedded_settings
    from web.app import create_app

    identity._dummy_hash.cache_clear()
    with TestClient(create_app(embedded_settings(tmp_path))):
        assert identity._dummy_hash.cache_info().currsize == 1
