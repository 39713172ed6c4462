"""The study search's SQL on both databases (SQLite embedded, PostgreSQL): scope, every
filter, pinyin keys and the (study_date, id) cursor."""

from __future__ import annotations

from pydicom.uid import generate_uid

from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from tests.dicomdata import ct_instance
from workspace import service


def test_search_filters_and_cursor(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="COUNTY", name="县医院", level="county")
        town = tenancy.add_institution(session=session, code="TOWN", name="镇", level="township", parent_code="COUNTY")
        identity.add_user(session=session, username="admin", role="admin", institution_code="COUNTY",
                          password="password-1")
        identity.add_user(session=session, username="rad", role="radiographer", institution_code="TOWN",
                          password="password-1")
        town_id = town.id
    ingestor = Ingestor(runtime.db, runtime.store)
    uids = []
    for number, (name, day) in enumerate((("张^秀英", "20261101"), ("张^秀英", "20261101"), ("李^梅", "20261005"),
                                          ("王^芳", "20250101"), ("单^雄", "20261201"))):
        uids.append(generate_uid())
        ingestor.ingest(ct_instance(study_uid=uids[-1], patient_name=name, patient_id=f"P{number}", study_date=day,
                                    modality="US" if number == 2 else "CT"), institution_id=town_id, source="t")
    ingestor.close()
    with runtime.db.scope(readonly=True) as session:
        admin = identity.principal_for(identity.get_user(session=session, username="admin"))

        def walk(wanted, limit=2):
            seen, cursor = [], ""
            while True:
                page = service.search(session, admin, wanted, cursor=cursor, limit=limit)
                seen += [row.uid for row in page.rows]
                if not page.next_cursor:
                    return seen
                cursor = page.next_cursor

        # Newest first; two studies on one day are ordered by id, and the cursor splits them.
        assert walk(service.StudyFilter(), limit=1) == [uids[4], uids[1], uids[0], uids[2], uids[3]]
        assert walk(service.StudyFilter(text="zxy")) == [uids[1], uids[0]]
        assert walk(service.StudyFilter(text="张秀")) == [uids[1], uids[0]]
        assert walk(service.StudyFilter(text="shan")) == [] and walk(service.StudyFilter(text="dan")) == [uids[4]]
        assert walk(service.StudyFilter(modality="us")) == [uids[2]]
        assert walk(service.StudyFilter(date_from="2026-01-01", date_to="2026-11-30")) == [uids[1], uids[0], uids[2]]
        assert walk(service.StudyFilter(report="consult")) == []
        assert walk(service.StudyFilter(text="50%_")) == []  # LIKE wildcards are escaped
        rad = identity.principal_for(identity.get_user(session=session, username="rad"))
        assert len(service.search(session, rad, service.StudyFilter(institution_id=town_id)).rows) == 5
