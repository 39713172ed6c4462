"""consult.signing: real keys, real certificates, real PAdES signatures."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
from datetime import date, datetime, timedelta, timezone

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consult.reportpdf import ReportContent, build_report_pdf
from consult.signing import (
    KDF_ITERATIONS,
    SigningError,
    canonical_json,
    create_ca,
    issue_signer,
    sign_data,
    sign_pdf,
    verify_data,
    verify_pdf,
)

CA_PW = "院级CA口令-2025"
READER_PW = "wang-密码-1"
REVIEWER_PW = "li-密码-2"
TZ = timezone(timedelta(hours=8))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def pki():
    ca = create_ca("澜沧县医学影像中心 CA", "澜沧县人民医院", CA_PW)
    reader = issue_signer(
        ca, CA_PW, username="wang.yi", display_name="王医生",
        institution="澜沧县人民医院", signer_password=READER_PW,
    )
    reviewer = issue_signer(
        ca, CA_PW, username="li.zhuren", display_name="李主任",
        institution="普洱市人民医院", signer_password=REVIEWER_PW,
    )
    return ca, reader, reviewer


def _report() -> ReportContent:
    return ReportContent(
        institution="澜沧县人民医院",
        department="医学影像科 Radiology",
        report_id="RPT-2025-000042",
        patient_name="张秀英",
        patient_sex="F",
        patient_age="67岁",
        patient_id="P0012345",
        modality="CT",
        body_part="胸部 Chest",
        exam_date=date(2025, 3, 1),
        accession_number="ACC20250301001",
        clinical_question="咳嗽两周，发热三天。Rule out pneumonia.",
        findings="右肺下叶见斑片状高密度影，边界模糊。纵隔内未见明显肿大淋巴结。",
        impression="右肺下叶肺炎。",
        recommendation="两周后复查胸部CT。",
        reader_name="王医生",
        read_at=datetime(2025, 3, 1, 14, 5, tzinfo=TZ),
        reviewer_name="李主任",
        reviewed_at=None,
        verify_url="https://lancang.example.cn/v/RPT-2025-000042",
    )


@pytest.fixture(scope="module")
def unsigned_pdf() -> bytes:
    return build_report_pdf(_report())


@pytest.fixture(scope="module")
def signed(pki, unsigned_pdf):
    ca, reader, reviewer = pki
    once = sign_pdf(
        unsigned_pdf, reader, READER_PW, ca.cert_pem,
        field_name="reader", reason="初步报告 Preliminary report", location="澜沧",
    )
    twice = sign_pdf(
        once, reviewer, REVIEWER_PW, ca.cert_pem,
        field_name="reviewer", reason="审核签发 Final report",
    )
    return once, twice


# ---------------------------------------------------------------- certificates


def test_ca_certificate_extensions(pki):
    ca, _, _ = pki
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.subject == cert.issuer
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "澜沧县医学影像中心 CA"
    cert.verify_directly_issued_by(cert)  # self-signed


def test_signer_certificate_extensions(pki):
    ca, reader, _ = pki
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = x509.load_pem_x509_certificate(reader.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "王医生"
    assert cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == "wang.yi"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    assert not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36") in list(eku)
    assert ExtendedKeyUsageOID.SERVER_AUTH not in list(eku)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc <= ca_cert.not_valid_after_utc


def test_private_keys_are_encrypted_at_rest(pki):
    ca, reader, _ = pki
    for material, password in ((ca, CA_PW), (reader, READER_PW)):
        name, _, der = asn1_pem.unarmor(material.key_pem_encrypted)
        assert name == "ENCRYPTED PRIVATE KEY"
        info = asn1_keys.EncryptedPrivateKeyInfo.load(der)
        params = info["encryption_algorithm"]["parameters"]
        kdf = params["key_derivation_func"]["parameters"]
        assert info["encryption_algorithm"]["algorithm"].native == "pbes2"
        assert kdf["iteration_count"].native == KDF_ITERATIONS >= 600_000
        assert params["encryption_scheme"]["algorithm"].native == "aes256_cbc"
        with pytest.raises(ValueError):
            serialization.load_pem_private_key(material.key_pem_encrypted, b"wrong")
        key = serialization.load_pem_private_key(
            material.key_pem_encrypted, password.encode("utf-8")
        )
        assert key.key_size == 256


def test_encrypted_key_is_standard_pkcs8_for_openssl(pki, tmp_path):
    openssl = _need("openssl")
    _, reader, _ = pki
    path = tmp_path / "key.pem"
    path.write_bytes(reader.key_pem_encrypted)
    env = dict(os.environ, PW=READER_PW)
    ok = subprocess.run([openssl, "pkey", "-in", path, "-passin", "env:PW", "-noout"],
                        env=env, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    env["PW"] = "not-it"
    bad = subprocess.run([openssl, "pkey", "-in", path, "-passin", "env:PW", "-noout"],
                         env=env, capture_output=True)
    assert bad.returncode != 0


def test_wrong_ca_password_cannot_issue(pki):
    ca, _, _ = pki
    with pytest.raises(SigningError, match="wrong CA password"):
        issue_signer(ca, "nope", username="x", display_name="x",
                     institution="x", signer_password="x")


# ---------------------------------------------------------------- PDF signing


def test_two_signers_sign_in_sequence_and_verify(pki, signed, unsigned_pdf):
    ca, _, _ = pki
    once, twice = signed
    assert twice.startswith(once), "the second signature must be an incremental update"
    assert once.startswith(unsigned_pdf)

    report = verify_pdf(twice, [ca.cert_pem])
    assert report.ok, report.problems
    assert report.problems == []
    assert [s.name for s in report.signers] == ["王医生", "李主任"]
    assert [s.field for s in report.signers] == ["reader", "reviewer"]
    assert [s.institution for s in report.signers] == ["澜沧县人民医院", "普洱市人民医院"]
    assert [s.username for s in report.signers] == ["wang.yi", "li.zhuren"]
    assert report.signers[0].reason == "初步报告 Preliminary report"
    assert all(s.intact and s.trusted for s in report.signers)
    assert [s.covers_whole_document for s in report.signers] == [False, True]
    now = datetime.now(timezone.utc)
    for s in report.signers:
        assert s.signed_at is not None and abs(now - s.signed_at) < timedelta(minutes=10)


def test_preliminary_signature_alone_verifies(pki, signed):
    ca, _, _ = pki
    report = verify_pdf(signed[0], [ca.cert_pem])
    assert report.ok, report.problems
    assert [(s.name, s.covers_whole_document) for s in report.signers] == [("王医生", True)]


def test_wrong_password_raises(pki, unsigned_pdf):
    ca, reader, _ = pki
    with pytest.raises(SigningError) as exc:
        sign_pdf(unsigned_pdf, reader, "wrong-password", ca.cert_pem,
                 field_name="reader", reason="x")
    assert str(exc.value) == "wrong signing password"
    with pytest.raises(SigningError, match="wrong signing password"):
        sign_data(b"{}", reader, REVIEWER_PW)


def test_cannot_sign_the_same_field_twice(pki, signed):
    ca, _, reviewer = pki
    with pytest.raises(SigningError, match="already signed"):
        sign_pdf(signed[1], reviewer, REVIEWER_PW, ca.cert_pem,
                 field_name="reviewer", reason="again")


def test_signer_from_another_ca_is_refused_at_signing(pki, unsigned_pdf):
    ca, _, _ = pki
    other = create_ca("Other CA", "Elsewhere", "pw")
    stranger = issue_signer(other, "pw", username="s", display_name="外院医生",
                            institution="Elsewhere", signer_password="pw")
    with pytest.raises(SigningError, match="not issued by this CA"):
        sign_pdf(unsigned_pdf, stranger, "pw", ca.cert_pem, field_name="f", reason="r")


def test_untrusted_ca_is_not_ok(pki, signed):
    other = create_ca("Rogue CA", "Nowhere", "pw")
    report = verify_pdf(signed[1], [other.cert_pem])
    assert not report.ok
    assert [s.name for s in report.signers] == ["王医生", "李主任"]
    assert not any(s.trusted for s in report.signers)
    assert all(s.intact for s in report.signers)
    assert any("trusted CA" in p for p in report.problems)
    assert not verify_pdf(signed[1], []).ok


def test_forged_signer_with_same_names_from_rogue_ca_is_not_ok(pki, unsigned_pdf):
    ca, _, _ = pki
    ca_subject = x509.load_pem_x509_certificate(ca.cert_pem).subject
    cn = ca_subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    rogue = create_ca(cn, "澜沧县人民医院", "pw")  # same subject name, other key
    fake = issue_signer(rogue, "pw", username="wang.yi", display_name="王医生",
                        institution="澜沧县人民医院", signer_password="pw")
    forged = sign_pdf(unsigned_pdf, fake, "pw", rogue.cert_pem,
                      field_name="reader", reason="forged")
    report = verify_pdf(forged, [ca.cert_pem])
    assert not report.ok and not report.signers[0].trusted


def test_content_changed_between_signatures_is_detected(pki, signed):
    """Someone alters the page after the reader signed, then a holder of a
    valid certificate signs on top: the reader's signature must flag it."""
    from io import BytesIO

    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    ca, _, reviewer = pki
    writer = IncrementalPdfFileWriter(BytesIO(signed[0]))
    overlay = writer.add_object(
        generic.StreamObject(stream_data=b"1 1 1 rg 60 400 300 60 re f")
    )
    writer.add_stream_to_page(0, overlay)
    out = BytesIO()
    writer.write(out)
    tampered = out.getvalue()
    assert not verify_pdf(tampered, [ca.cert_pem]).ok
    cosigned = sign_pdf(tampered, reviewer, REVIEWER_PW, ca.cert_pem,
                        field_name="reviewer", reason="final")
    report = verify_pdf(cosigned, [ca.cert_pem])
    assert not report.ok
    assert [s.name for s in report.signers] == ["王医生", "李主任"]
    assert any("王医生" in p and "changed after this signature" in p
               for p in report.problems), report.problems


def _last_contents_gap(pdf: bytes) -> tuple[int, int]:
    ranges = re.findall(rb"/ByteRange\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\]", pdf)
    _, a, b, _ = (int(v) for v in ranges[-1])
    return a, b


def test_every_single_byte_change_is_detected(pki, signed):
    """Hard requirement: flip one byte anywhere -> verification fails.

    40 seeded random positions over the whole file, plus targeted ones in
    the only bytes the last signature does not cover itself: its /Contents
    hex string (the DER part, the zero padding, the delimiters)."""
    ca, _, _ = pki
    pdf = signed[1]
    rng = random.Random(20250301)
    positions = [rng.randrange(len(pdf)) for _ in range(40)]
    a, b = _last_contents_gap(pdf)
    assert pdf[a:a + 1] == b"<" and pdf[b - 1:b] == b">"
    hex_end = a + 1 + len(pdf[a + 1:b - 1].rstrip(b"0"))
    positions += [a, b - 1, a + 1, a + 7, (a + hex_end) // 2, hex_end - 3,
                  hex_end + 5, b - 2, len(pdf) - 1, 0]
    for pos in positions:
        for xor in ({rng.randrange(1, 256), 0x20} if a <= pos < b else {rng.randrange(1, 256)}):
            altered = bytearray(pdf)
            altered[pos] ^= xor
            report = verify_pdf(bytes(altered), [ca.cert_pem])
            assert not report.ok, (
                f"change at byte {pos} (^{xor:#04x}, was {pdf[pos:pos + 1]!r}) went undetected"
            )
            assert report.problems, pos


def test_appended_or_truncated_bytes_are_detected(pki, signed):
    ca, _, _ = pki
    pdf = signed[1]
    for altered in (pdf + b"\n", pdf + b" ", pdf + b"%%EOF\n", pdf[:-1], pdf[:-8]):
        report = verify_pdf(altered, [ca.cert_pem])
        assert not report.ok
        assert report.problems


def test_unsigned_and_garbage_inputs_never_raise(pki, signed, unsigned_pdf):
    ca, _, _ = pki
    rng = random.Random(7)
    pdf = signed[1]
    for data in (
        b"",
        b"hello",
        b"%PDF-1.7\n%%EOF\n",
        bytes(rng.randrange(256) for _ in range(2000)),
        pdf[: len(pdf) // 2],
        pdf[len(pdf) // 3:],
        pdf.replace(b"/ByteRange", b"/ByteRangX"),
        pdf.replace(b"/Sig", b"/Six"),
        pdf.replace(b"startxref", b"startxreF"),
    ):
        report = verify_pdf(data, [ca.cert_pem])
        assert not report.ok
        assert report.problems
    report = verify_pdf(unsigned_pdf, [ca.cert_pem])
    assert not report.ok and report.signers == []
    assert "no signature" in report.problems[0]


def test_functions_work_inside_a_running_event_loop(pki, signed):
    ca, _, _ = pki

    async def main():
        return verify_pdf(signed[1], [ca.cert_pem])

    assert asyncio.run(main()).ok


# ---------------------------------------------------------------- detached data


def test_canonical_json():
    a = canonical_json({"b": "张秀英", "a": [1, {"z": None, "y": True}], "c": 1.5})
    b = canonical_json({"c": 1.5, "a": [1, {"y": True, "z": None}], "b": "张秀英"})
    assert a == b
    assert a == '{"a":[1,{"y":true,"z":null}],"b":"张秀英","c":1.5}'.encode("utf-8")
    when = datetime(2025, 3, 1, 14, 5, tzinfo=TZ)
    assert canonical_json({"t": when}) == b'{"t":"2025-03-01T14:05:00+08:00"}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_detached_data_signature(pki):
    ca, reader, reviewer = pki
    data = canonical_json({"report_id": "RPT-2025-000042", "impression": "右肺下叶肺炎。"})
    signature = sign_data(data, reader, READER_PW)
    assert verify_data(data, signature, reader.cert_pem, [ca.cert_pem])
    # changed data, other signer's certificate, untrusted CA, mangled signature
    assert not verify_data(data.replace("肺炎".encode(), "正常".encode()), signature,
                           reader.cert_pem, [ca.cert_pem])
    assert not verify_data(data + b" ", signature, reader.cert_pem, [ca.cert_pem])
    assert not verify_data(data, signature, reviewer.cert_pem, [ca.cert_pem])
    other = create_ca("Other CA", "Elsewhere", "pw")
    assert not verify_data(data, signature, reader.cert_pem, [other.cert_pem])
    assert not verify_data(data, b"", reader.cert_pem, [ca.cert_pem])
    assert not verify_data(data, signature[:-3], reader.cert_pem, [ca.cert_pem])
    flipped = bytearray(signature)
    flipped[-5] ^= 0x01  # inside the ECDSA signature value
    assert not verify_data(data, bytes(flipped), reader.cert_pem, [ca.cert_pem])


def test_detached_data_signature_verifies_with_openssl(pki, tmp_path):
    openssl = _need("openssl")
    ca, reader, _ = pki
    data = canonical_json({"patient": "张秀英", "findings": "line 1\nline 2\r\n"})
    (tmp_path / "report.json").write_bytes(data)
    (tmp_path / "report.p7s").write_bytes(sign_data(data, reader, READER_PW))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    cmd = [openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", "report.p7s",
           "-content", "report.json", "-CAfile", "ca.pem", "-purpose", "any",
           "-out", os.devnull]
    good = subprocess.run(cmd, cwd=tmp_path, capture_output=True)
    assert good.returncode == 0, good.stderr
    (tmp_path / "report.json").write_bytes(data.replace(b"line 2", b"line 3"))
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True)
    assert bad.returncode != 0
