"""16.17: studies of one patient shared together through one link: the patient sees each after
the same PIN (images, report, download); nothing of another patient or of a study not shared;
a radiographer cannot mix patients or share what they may not."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from film import service as shares
from imaging.models import Instance, Series, Study
from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from storage.errors import Invalid, NotFound
from tests.dicomdata import ct_instance
from web.app import create_app

PHONE = {"user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) LancangTest", "accept": "text/html"}


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


@pytest.fixture
def world(runtime):
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township")
        other = tenancy.add_institution(session=session, code="OTHER", name="另一镇卫生院", level="township")
        rad = identity.add_user(session=session, username="rad", role="radiographer", institution_code="TOWN",
                                password="password-1")
        principal = identity.principal_for(rad)
        town_id, other_id = town.id, other.id
    ingestor = Ingestor(runtime.db, runtime.store)
    uids = {}
    for name, pid, day, modality, institution in (("ct", "P001", "20261101", "CT", town_id),
                                                  ("us", "P001", "20261115", "US", town_id),
                                                  ("stranger", "P999", "20261116", "CT", town_id),
                                                  ("elsewhere", "P001", "20261117", "CT", other_id)):
        uids[name] = ingestor.ingest(ct_instance(study_uid=generate_uid(), patient_id=pid, study_date=day,
                                                 modality=modality), institution_id=institution,
                                     source="t").study_instance_uid
    ingestor.close()
    return uids, principal


def _create(runtime, principal, main, together):
    settings = runtime.settings
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=principal, study_uid=main, together=together,
                                      secret_key=settings.effective_secret_key, public_url=settings.effective_public_url)
        out = created.as_json()
    out["token"] = out["url"].rsplit("/f/", 1)[1]
    return out


def _instance_id(runtime, study_uid):
    with runtime.db.scope(readonly=True) as session:
        return session.scalar(select(Instance.id).join(Series, Series.id == Instance.series_pk)
                              .join(Study, Study.id == Series.study_pk).where(Study.study_instance_uid == study_uid))


def test_the_patient_sees_each_study_shared_together(runtime, world):
    uids, principal = world
    share = _create(runtime, principal, uids["ct"], [uids["us"]])
    assert share["together"] == [uids["us"]]
    with TestClient(create_app(runtime.settings)) as client:
        client.post(f"/f/{share['token']}/unlock", data={"pin": share["pin"]}, headers=PHONE)
        first = client.get(f"/f/{share['token']}/view", headers=PHONE)
        assert first.status_code == 200 and 'id="other-studies"' in first.text
        assert f"/f/{share['token']}/view?s=1" in first.text
        second = client.get(f"/f/{share['token']}/view?s=1", headers=PHONE)
        assert second.status_code == 200 and "2026年11月15日" in second.text
        assert f"/f/{share['token']}/download?s=1" in second.text
        assert client.get(f"/f/{share['token']}/view?s=2", headers=PHONE).status_code == 404
        ok = client.get(f"/f/{share['token']}/img/{_instance_id(runtime, uids['us'])}/0.jpg", headers=PHONE)
        assert ok.status_code == 200 and ok.content[:2] == b"\xff\xd8"
        for name in ("stranger", "elsewhere"):  # never a study that was not shared
            answer = client.get(f"/f/{share['token']}/img/{_instance_id(runtime, uids[name])}/0.jpg", headers=PHONE)
            assert answer.status_code == 404, name
        download = client.get(f"/f/{share['token']}/download?s=1", headers=PHONE)
        assert download.status_code == 200 and download.content[:2] == b"PK"


def test_a_link_never_mixes_patients_or_takes_what_the_sharer_may_not(runtime, world):
    uids, principal = world
    with pytest.raises(Invalid):
        _create(runtime, principal, uids["ct"], [uids["stranger"]])
    with pytest.raises(NotFound):  # another township's study of a P001 there: not this radiographer's
        _create(runtime, principal, uids["ct"], [uids["elsewhere"]])
    with runtime.db.scope(readonly=True) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uids["ct"]))
        offered = [s.study_instance_uid for s in shares.shareable_with(session, principal, study)]
    assert offered == [uids["us"]]


def test_the_radiographer_ticks_the_other_study_on_the_film_page(runtime, world):
    uids, _ = world
    with TestClient(create_app(runtime.settings)) as client:
        client.post("/login", data={"username": "rad", "password": "password-1"})
        page = client.get(f"/studies/{uids['ct']}/film")
        assert f'name="together" value="{uids["us"]}"' in page.text and uids["stranger"] not in page.text
        token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)
        made = client.post(f"/studies/{uids['ct']}/film", data={"days": "30", "together": [uids["us"]],
                                                                "csrf_token": token})
        assert made.status_code == 201
    with runtime.db.scope(readonly=True) as session:
        from film.models import ShareStudy
        assert session.scalars(select(ShareStudy.study_instance_uid)).all() == [uids["us"]]
