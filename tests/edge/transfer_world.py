"""Shared pieces of the edge transfer tests: the region's app with the edge routers, a small
referral tree with edge credentials, and gzip as the edge sends it."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass

from fastapi import FastAPI

from edge import region
from web.app import create_app
from storage import identity
from storage import service as tenancy

PASSWORD = "password-1"


def region_app(settings=None) -> FastAPI:
    """web.app's application (it carries the edge's routes, at the region and at the edge)."""
    return create_app(settings)


def create() -> FastAPI:
    """For `uvicorn --factory tests.edge.transfer_world:create` (settings from the environment)."""
    return region_app()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, 6, mtime=0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class RegionWorld:
    credentials: dict[str, str]   # edge name -> secret
    institutions: dict[str, int]  # code -> id


def build_region(db, *, edges: tuple[tuple[str, str], ...] = (("t01-edge", "T01"), ("t02-edge", "T02"))) -> RegionWorld:
    """COUNTY above the townships T01 and T02 (and OTHER, outside the tree), an admin and a
    radiographer at COUNTY, and one edge credential per township."""
    with db.scope() as session:
        county = tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
        t01 = tenancy.add_institution(session=session, code="T01", name="糯福乡卫生院", level="township",
                                      parent_code="COUNTY")
        t02 = tenancy.add_institution(session=session, code="T02", name="竹塘乡卫生院", level="township",
                                      parent_code="COUNTY")
        other = tenancy.add_institution(session=session, code="OTHER", name="别县卫生院", level="township")
        identity.add_user(session=session, username="county-admin", role="admin", institution_code="COUNTY",
                          password=PASSWORD)
        identity.add_user(session=session, username="county-rad", role="radiographer", institution_code="COUNTY",
                          password=PASSWORD)
        ids = {"COUNTY": county.id, "T01": t01.id, "T02": t02.id, "OTHER": other.id}
    credentials = {}
    for name, code in edges:
        credentials[name] = region.cli_issue(db, institution_code=code, name=name)
    return RegionWorld(credentials, ids)


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}
