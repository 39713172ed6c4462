"""A small referral tree with people and images for the maternal tests.

    SH (partner, Shanghai)      CITY 普洱市人民医院
                                  └ COUNTY 澜沧县人民医院
                                      ├ TA 勐朗镇卫生院   ← 张秀英's ultrasound and CT (P001), linked by her ID number;
                                      │                    王芳's ultrasound (P002, no ID number: no Person)
                                      └ TB 糯福乡卫生院   ← 张秀英's earlier study there (NF-7), and 李梅's (NF-9)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import generate_uid

from tests.dicomdata import ct_instance

PASSWORD = "password-1"
PEOPLE = {
    "ma": ("radiographer", "TA", "马技师"), "li": ("specialist", "TA", "李医生"), "taadmin": ("admin", "TA", "勐朗管理员"),
    "niu": ("radiographer", "TB", "牛技师"), "tbadmin": ("admin", "TB", "糯福管理员"),
    "wang": ("specialist", "COUNTY", "王医生"), "zhou": ("coordinator", "COUNTY", "周协调"),
    "boss": ("admin", "COUNTY", "县管理员"), "chen": ("specialist", "CITY", "陈主任"),
    "hu": ("specialist", "SH", "胡教授"),
}


def resident_id() -> str:
    from imaging.persons import check_character
    body = "53082819900101002"
    return body + check_character(body)


@dataclass
class World:
    institutions: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    patient_pk: int = 0            # 张秀英 at TA (linked to her record at TB through a Person)
    tb_patient_pk: int = 0         # her record at TB
    other_pk: int = 0              # 李梅 at TB, no Person
    solo_pk: int = 0               # 王芳 at TA only, no Person
    solo_study: str = ""
    ta_studies: list[str] = field(default_factory=list)
    tb_study: str = ""
    other_study: str = ""


def _ingest(runtime, institution_id: int, **kw) -> tuple[str, int]:
    from imaging.models import Study
    from imaging.service import Ingestor
    from sqlalchemy import select

    study = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study, size=32, **kw), institution_id=institution_id, source="test")
    ingestor.close()
    with runtime.db.scope(readonly=True) as session:
        return study, session.scalar(select(Study.patient_pk).where(Study.study_instance_uid == study))


def build(runtime) -> World:
    from storage import identity
    from storage import service as tenancy

    world = World()
    with runtime.db.scope() as session:
        for code, name, level, parent in (("CITY", "普洱市人民医院", "city", None), ("SH", "上海对口医院", "partner", None),
                                          ("COUNTY", "澜沧县人民医院", "county", "CITY"),
                                          ("TA", "勐朗镇卫生院", "township", "COUNTY"),
                                          ("TB", "糯福乡卫生院", "township", "COUNTY")):
            world.institutions[code] = tenancy.add_institution(session=session, code=code, name=name, level=level,
                                                               parent_code=parent).id
        for username, (role, code, name) in PEOPLE.items():
            world.users[username] = identity.add_user(session=session, username=username, role=role,
                                                      institution_code=code, password=PASSWORD, display_name=name).id
    ids = (("RESIDENT_ID_CN", resident_id()),)
    for description, modality in (("产科超声", "US"), ("胸部CT", "CT")):
        uid, world.patient_pk = _ingest(runtime, world.institutions["TA"], patient_id="P001", birth_date="19900101",
                                        other_ids=ids, modality=modality, study_date="20261120")
        world.ta_studies.append(uid)
    world.tb_study, world.tb_patient_pk = _ingest(runtime, world.institutions["TB"], patient_id="NF-7",
                                                  birth_date="19900101", other_ids=ids, study_date="20260901")
    world.solo_study, world.solo_pk = _ingest(runtime, world.institutions["TA"], patient_id="P002",
                                              patient_name="王^芳", birth_date="19960707", modality="US",
                                              study_date="20261118")
    world.other_study, world.other_pk = _ingest(runtime, world.institutions["TB"], patient_id="NF-9",
                                                patient_name="李^梅", birth_date="19950505", study_date="20261001")
    return world


def principal(runtime, username: str):
    from storage import identity

    with runtime.db.scope(readonly=True) as session:
        return identity.principal_for(identity.get_user(session=session, username=username))
