"""A small referral tree for the 危急值 and emergency tests: a township (TOWN) under a county
(COUNTY) under a city (CITY), another township (TOWN2), and their people. One CT study made
at TOWN. Used by test_critical.py, test_emergency.py and test_emergency_browser.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from tests.dicomdata import ct_instance

PASSWORD = "password-1"
PEOPLE = {  # username: (role, institution, display name, mobile)
    "li": ("radiographer", "TOWN", "李技师", "13800000001"),
    "ma": ("coordinator", "TOWN", "马院长", "13800000002"),
    "zhou": ("coordinator", "COUNTY", "周协调", "13800000003"),
    "wang": ("specialist", "COUNTY", "王医生", ""),
    "sun": ("specialist", "COUNTY", "孙医生", ""),
    "gao": ("coordinator", "CITY", "高主任", ""),
    "chen": ("specialist", "CITY", "陈主任", ""),
    "he": ("radiographer", "TOWN2", "何技师", ""),
}


def seed_region(runtime, password: str = PASSWORD) -> dict:
    """The institutions and people; returns {"study": uid, "tokens": {username: bearer}}."""
    tokens = {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county",
                                parent_code="CITY")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        tenancy.add_institution(session=session, code="TOWN2", name="东河乡卫生院", level="township",
                                parent_code="COUNTY")
        town_id = town.id
        for username, (role, code, name, mobile) in PEOPLE.items():
            user = identity.add_user(session=session, username=username, role=role, institution_code=code,
                                     password=password, display_name=name)
            user.mobile = mobile
            tokens[username] = identity.issue_token(session=session, user=user)[0]
    study = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study), institution_id=town_id, source="test")
    ingestor.close()
    return {"study": study, "tokens": tokens}


# Fixtures for the API tests of this region (imported by the test modules that use them).

@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


@pytest.fixture
def region(runtime):
    return seed_region(runtime)


@pytest.fixture
def api(runtime, region):
    """call(method, username, path, **kwargs): the app as that user (bearer token)."""
    from web.app import create_app

    with TestClient(create_app(runtime.settings)) as client:
        def call(method, user, path, **kwargs):
            return client.request(method, path, headers={"Authorization": f"Bearer {region['tokens'][user]}"},
                                  **kwargs)
        yield call


def ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json()
