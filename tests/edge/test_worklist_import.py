"""A list of patients registered at once at the desk (edge/worklist_import.py): UTF-8 with a BOM
and GB18030 files (what Excel on Chinese Windows saves), Chinese and English headers, the
spreadsheet's spellings (女, 1990/1/1, 产科超声, 是); all or nothing, with every problem of
every row reported by the row number the spreadsheet shows; files refused whole (too large,
too many rows, empty, a required column missing, a workbook); one audit record; who may;
the page (/desk/import and the template), the command line, and the modality pulling an
imported patient with dcmtk's `findscu -W`.

Run on SQLite and PostgreSQL (the `runtime` fixture's two backends)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from edge import worklist, worklist_import
from edge.worklist_import import ListRefused, ListTooLarge
from edge.worklist_models import WorklistEntry
from imaging.persons import check_character
from storage.errors import NotPermitted
from storage.models import AuditRecord
from tests.cli import run_cli
from tests.conftest import settings_env
from tests.edge.test_mwl import FINDSCU, _findscu, edge  # noqa: F401 (the MWL SCP fixture, and its query)
from tests.edge.test_worklist import RESIDENT, _principal, _wrong_check, desk  # noqa: F401 (勐朗镇, its desk users)
from web.app import create_app

OTHER_BODY = "53082819851203003"  # born 1985-12-03, 17th digit odd: male
OTHER = OTHER_BODY + check_character(OTHER_BODY)
WRONG_CHECK = _wrong_check(RESIDENT)  # RESIDENT: born 1990-01-01, female


def _csv(*lines: str, encoding: str = "utf-8-sig") -> bytes:
    return "\r\n".join(lines).encode(encoding) + b"\r\n"


def _today(days: int = 0) -> str:
    return (worklist.localtime_today() + timedelta(days=days)).isoformat()


def _import(runtime, data: bytes, username: str = "desk", filename: str = "list.csv"):
    with runtime.db.scope() as session:
        return worklist_import.import_list(session=session, principal=_principal(runtime, username), data=data,
                                           filename=filename, source="127.0.0.1")


def _refused(runtime, data: bytes, username: str = "desk") -> ListRefused:
    with pytest.raises((ListRefused, ListTooLarge)) as caught:
        _import(runtime, data, username)
    return caught.value


def _entries(runtime) -> list[WorklistEntry]:
    with runtime.db.scope(readonly=True) as session:
        return list(session.scalars(select(WorklistEntry).order_by(WorklistEntry.id)))


def _audit(runtime, action_like: str = "worklist.%") -> list[AuditRecord]:
    with runtime.db.scope(readonly=True) as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.action.like(action_like))
                                    .order_by(AuditRecord.seq)))


# -- reading the file --------------------------------------------------------------------------


def test_a_utf8_bom_list_with_chinese_headers_registers_every_row_as_the_desk_would(desk):
    data = _csv("姓名,性别,出生日期,身份证号,电话,检查,设备,预约日期,预约时间,加急,妊娠风险,孕周",
                f"张秀英,女,1990/1/1,{RESIDENT},138 0000 1234,产科超声,US01,{_today()},9:30,是,红,32",
                f"欧阳娜娜,,,{OTHER.lower()},,DX01,DR01,{_today(1)},,,,",
                "扎约·娜倮,女,2001-05-06,,0879-7221234,胸部正位 Chest PA,,,,否,绿色,")
    imported = _import(desk, data)
    assert imported.count == 3 and imported.ignored == ["孕周"] and imported.first_day == _today()
    first, second, third = _entries(desk)
    assert (first.family_name, first.given_name, first.name_pinyin) == ("张", "秀英", "Zhang^Xiuying")
    assert (first.sex, first.birth_date, first.phone) == ("F", date(1990, 1, 1), "13800001234")
    assert (first.modality, first.procedure_code, first.station_ae) == ("US", "US01", "US01")
    assert first.urgent and first.risk_colour == "red" and first.priority == 0
    assert (second.family_name, second.given_name, second.name_pinyin) == ("欧阳", "娜娜", "Ouyang^Nana")
    assert (second.sex, second.birth_date, second.resident_id) == ("M", date(1985, 12, 3), OTHER)  # from the ID
    assert second.scheduled_at.astimezone(worklist.localtime.zone()).date().isoformat() == _today(1)
    assert (third.family_name, third.given_name, third.risk_colour, third.urgent) == ("", "扎约·娜倮", "green", False)
    assert [e.accession_number for e in (first, second, third)] == imported.accessions
    assert {e.registered_by for e in (first, second, third)} == {"desk"}


def test_a_gb18030_list_with_english_headers_as_excel_on_chinese_windows_saves_it(desk):
    data = _csv("Family Name,Given_Name,Sex,Birth Date,Resident ID,Exam,Station,Scheduled,Urgent,Risk",
                f"吕,秀英,F,1990/01/01,{RESIDENT},Obstetric ultrasound,US01,{_today().replace('-', '/')} 14:05,yes,"
                "purple",
                ",娜倮,female,2015-03-01,,胸部正位,,,,", encoding="gb18030")
    assert not data.startswith(b"\xef\xbb\xbf") and "吕".encode("gb18030") in data  # not UTF-8
    assert _import(desk, data).count == 2
    first, second = _entries(desk)
    assert (first.family_name, first.given_name, first.name_pinyin) == ("吕", "秀英", "Lyu^Xiuying")
    assert first.risk_colour == "purple" and first.procedure_code == "US01" and first.urgent
    assert worklist.localtime.display(first.scheduled_at, "%Y-%m-%d %H:%M") == f"{_today()} 14:05"
    assert (second.family_name, second.given_name, second.name_pinyin, second.sex) == ("", "娜倮", "^Naluo", "F")


def test_one_bad_row_registers_nothing_and_every_problem_is_reported_with_its_row(desk):
    data = _csv("姓名,性别,出生日期,身份证号,电话,检查,设备,加急",
                f"张秀英,女,1990-01-01,{RESIDENT},13800001234,DX01,DR01,",
                "",  # a blank line: skipped, but counted, as the spreadsheet numbers its rows
                f"李四,女,1990-01-01,{WRONG_CHECK},12345,DX01,NF_DR,",
                "王五,男,1980-02-30,,,脑部核磁,,也许",
                f"赵六,女,1990-01-01,{RESIDENT},,US02,,")
    refused = _refused(desk, data)
    assert refused.status == 422
    lines = refused.problems
    assert [line.split(" · ")[0] for line in lines] == ["第 4 行 row 4"] * 3 + ["第 5 行 row 5"] * 3
    assert any(line.startswith("第 4 行 row 4 · 身份证号 resident_id: ") and "校验位不符" in line for line in lines)
    assert any(line.startswith("第 4 行 row 4 · 电话 phone: 电话应为11位手机号") for line in lines)
    assert any(line.startswith("第 4 行 row 4 · 设备 station: 该设备未在本机构登记") for line in lines)
    assert any(line.startswith("第 5 行 row 5 · 出生日期 birth_date: 出生日期格式应为") for line in lines)
    assert "第 5 行 row 5 · 检查 exam: 未知的检查“脑部核磁”：请用代码（如 DX01）或名称（如 胸部正位） / unknown exam " \
           "'脑部核磁': use a code (DX01) or a name (胸部正位)" in lines
    assert "第 5 行 row 5 · 加急 urgent: 加急请填“是”或“否” / urgent: write 是 (yes) or 否 (no)" in lines
    assert all(" / " in line for line in lines)  # Chinese first, English beside
    assert _entries(desk) == [] and _audit(desk) == []  # the good rows went with the bad


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_file_is_refused_whole_with_the_reason_when_it_cannot_be_a_list(desk, backend):
    header = "姓名,检查"
    too_many = _refused(desk, _csv(header, *["张秀英,DX01"] * 501))
    assert too_many.status == 422 and too_many.problems == [
        "超过 500 行（本文件 501 行），请分成几个文件 / more than 500 rows (this file has 501): split it into several files"]
    big = _csv(header, "张秀英,DX01") + b" " * worklist_import.MAX_BYTES
    too_large = _refused(desk, big)
    assert too_large.status == 413 and "over the 1 MiB limit" in too_large.problems[0]
    assert _refused(desk, b"").problems == ["文件是空的 / the file is empty"]
    assert _refused(desk, b"\xef\xbb\xbf\r\n\r\n").problems == ["文件是空的 / the file is empty"]
    assert _refused(desk, _csv(header)).problems == ["表头下没有数据行 / there are no rows under the header"]
    missing = _refused(desk, _csv("姓名,性别", "张秀英,女")).problems
    assert missing == ["缺少必需的列：检查 / missing the required column 检查 (exam): an exam code such as DX01 or a "
                       "name such as 胸部正位"]
    assert "缺少必需的列：姓名" in _refused(desk, _csv("性别,检查", "女,DX01")).problems[0]
    assert "同一项" in _refused(desk, _csv("姓名,name,检查", "张秀英,张秀英,DX01")).problems[0]
    assert "不是 CSV 文件" in _refused(desk, b"PK\x03\x04 a workbook").problems[0]
    damaged = _csv("name,exam", *["张秀英,DX01"] * 3, "李四,DX01").replace("李".encode(), b"\xe6\x9d")
    assert _refused(desk, damaged).problems == ["第 5 行 row 5: 文件是 UTF-8 但有损坏的字符，请重新导出 / the file is "
                                                "UTF-8 with damaged characters: export it again"]
    assert _entries(desk) == [] and _audit(desk) == []


def test_five_hundred_rows_are_imported_and_audited_once(desk):
    rows = [f"张秀英,女,1990-01-01,{RESIDENT},DX01,{_today()},{8 + i // 60:02d}:{i % 60:02d}" for i in range(500)]
    imported = _import(desk, _csv("姓名,性别,出生日期,身份证号,检查,预约日期,预约时间", *rows), filename="孕检.csv")
    assert imported.count == 500
    entries = _entries(desk)
    assert len({e.patient_id for e in entries}) == 1  # one person: her earlier row's patient ID, as at the desk
    records = _audit(desk)
    assert [(r.action, r.actor, r.institution, r.outcome, r.source) for r in records] == [
        ("worklist.import", "desk", "MLZ", "ok", "127.0.0.1")]
    detail = records[0].detail
    assert detail["count"] == 500 and detail["file"] == "孕检.csv" and detail["resident_ids"] == 500
    assert detail["entries"] == [e.accession_number for e in entries]
    assert records[0].object_id.startswith("sha256:") and RESIDENT not in str(detail)


def test_only_desk_staff_import_and_only_onto_their_own_worklist(desk):
    data = _csv("姓名,身份证号,检查,设备", f"张秀英,{RESIDENT},DX01,DR01")
    with pytest.raises(NotPermitted):
        _import(desk, data, username="li")  # a specialist of the same township reads, never registers
    # Another township's radiographer: the list goes onto her own worklist, where DR01 is not a station.
    refused = _refused(desk, data, username="niu")
    assert refused.problems == ["第 2 行 row 2 · 设备 station: 该设备未在本机构登记 / that station is not one of this "
                                "institution's modalities"]
    _import(desk, _csv("姓名,身份证号,检查,设备", f"张秀英,{RESIDENT},DX01,NF_DR"), username="niu")
    assert [(e.registered_by, e.station_ae) for e in _entries(desk)] == [("niu", "NF_DR")]
    with desk.db.scope(readonly=True) as session:
        mlz = worklist.day_list(session=session, principal=_principal(desk, "desk"), day=worklist.localtime_today())
    assert mlz == []


# -- the page ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["embedded"])
def test_the_desk_imports_a_list_and_shows_every_row_problem_beside_the_file_control(desk, backend):
    with TestClient(create_app(desk.settings)) as client:
        assert client.post("/login", data={"username": "desk", "password": "password-1"},
                           follow_redirects=False).status_code == 303
        page = client.get("/desk")
        assert 'action="/desk/import#desk-import"' in page.text and 'href="/desk/import-template.csv"' in page.text
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)[1]

        template = client.get("/desk/import-template.csv")
        assert template.headers["content-type"] == "text/csv; charset=utf-8"
        assert template.content.startswith(b"\xef\xbb\xbf\xe5\xa7\x93\xe5\x90\x8d,")  # BOM, then 姓名
        assert "attachment" in template.headers["content-disposition"]
        assert template.content.decode("utf-8-sig").splitlines()[0].split(",")[:6] == \
            ["姓名", "性别", "出生日期", "身份证号", "电话", "检查"]

        def upload(data: bytes, **extra):
            return client.post("/desk/import", data={"csrf_token": token, **extra},
                               files={"file": ("list.csv", data, "text/csv")}, follow_redirects=False)

        # A cookie-signed-in form with a file but no CSRF token is refused (the body is multipart).
        forged = client.post("/desk/import", files={"file": ("list.csv", template.content, "text/csv")})
        assert forged.status_code == 403 and _entries(desk) == []

        bad = upload(_csv("姓名,身份证号,检查", f"张秀英,{RESIDENT},DX01", f"李四,{WRONG_CHECK},DX01"))
        assert bad.status_code == 422 and 'id="import-errors"' in bad.text
        assert "第 3 行 row 3 · 身份证号 resident_id: " in bad.text and "未导入任何人" in bad.text
        assert _entries(desk) == []

        assert upload(b"x" * (worklist_import.MAX_BYTES + 10)).status_code == 413
        assert "文件是空的" in upload(b"").text

        done = upload(template.content)  # the template itself is a list of one
        assert done.status_code == 303 and done.headers["location"] == f"/desk?day={_today()}&imported=1#top"
        shown = client.get(done.headers["location"])
        assert "已导入 1 人 Imported 1" in shown.text and "张秀英" in shown.text
    assert [r.action for r in _audit(desk) if r.action != "worklist.list"] == ["worklist.import"]


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["embedded"])
def test_the_command_line_imports_a_list_or_prints_every_row_problem_and_exits_2(desk, backend, tmp_path):
    env = settings_env(desk.settings)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_bytes(_csv("姓名,身份证号,检查,设备,备注", f"张秀英,{RESIDENT},DX01,DR01,", f"欧阳娜娜,{OTHER},US03,,",
                          encoding="gb18030"))
    bad.write_bytes(_csv("姓名,性别,出生日期,身份证号,检查", f"张秀英,女,1990-01-01,{WRONG_CHECK},DX01",
                         "李四,男,1980-01-01,,CT09"))

    refused = run_cli(env, "edge", "import-worklist", str(bad), "--institution", "MLZ", check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines()[0].startswith("第 2 行 row 2 · 身份证号 resident_id: ")
    assert "第 3 行 row 3 · 检查 exam: 未知的检查“CT09”" in refused.stderr
    assert "nothing imported (2 problem(s))" in refused.stderr and _entries(desk) == []

    done = run_cli(env, "edge", "import-worklist", str(good), "--institution", "MLZ")
    assert done.stdout.startswith("imported 2 / 已导入 2 人")
    assert "未使用的列: 备注" in done.stderr
    assert [(e.family_name, e.registered_by) for e in _entries(desk)] == [("张", "system:cli"), ("欧阳", "system:cli")]
    records = _audit(desk)
    assert [(r.action, r.actor, r.actor_kind, r.institution, r.source) for r in records] == [
        ("worklist.import", "system:cli", "system", "MLZ", "cli")]
    assert records[0].detail["count"] == 2 and records[0].detail["file"] == "good.csv"

    missing = run_cli(env, "edge", "import-worklist", str(tmp_path / "nope.csv"), "--institution", "MLZ", check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    unknown = run_cli(env, "edge", "import-worklist", str(good), "--institution", "XXX", check=False)
    assert unknown.returncode == 2 and "error:" in unknown.stderr and len(_entries(desk)) == 2


# -- the modality ------------------------------------------------------------------------------


@pytest.mark.skipif(not Path(FINDSCU).exists(), reason="dcmtk not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("backend", ["embedded"])
def test_the_modality_pulls_an_imported_patient_from_its_worklist(edge, backend, tmp_path):
    data = _csv("姓名,性别,出生日期,身份证号,检查,设备,妊娠风险",
                f"张秀英,女,1990/1/1,{RESIDENT},胸部正位,DR01,红",
                "欧阳娜娜,女,2001-05-06,,产科超声,US01,")
    with edge.db.scope() as session:
        imported = worklist_import.import_list(session=session, principal=edge.principal, data=data)
    done, answers = _findscu(edge, tmp_path, "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=DR01")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(str(a.PatientName), a.AccessionNumber, a.RequestedProcedurePriority) for a in answers] == [
        ("Zhang^Xiuying=张^秀英", imported.accessions[0], "HIGH")]
    assert answers[0].OtherPatientIDsSequence[0].PatientID == RESIDENT
    done, answers = _findscu(edge, tmp_path, "ScheduledProcedureStepSequence[0].Modality=US", calling="US01")
    assert [str(a.PatientName) for a in answers] == ["Ouyang^Nana=欧阳^娜娜"]
