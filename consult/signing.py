"""Digital signatures for consult reports: institutional CA, signer
certificates, PAdES-signed PDFs and detached CMS signatures over report data.

Pure functions, no database: callers store the PEM blobs of
:class:`CaMaterial` / :class:`SignerMaterial` and pass them back in.

Algorithms
----------
* Keys: ECDSA on NIST P-256 with SHA-256, for the CA and the signers.
  Chosen over RSA-3072 (equivalent ~128-bit strength) because key generation
  is instant (RSA-3072 takes around a second per key on a small server),
  signatures are 64 bytes instead of 384, and it is supported by pyHanko, by
  OpenSSL and by Adobe Acrobat/Reader (ECDSA PAdES since Acrobat X).  China's
  national CAs issue SM2/SM3 certificates; neither pyHanko nor cryptography
  can make PDF signatures with SM2, so a national-CA integration would need a
  different signing backend (or an RSA/ECDSA certificate from that CA).
* Private keys at rest: standard encrypted PKCS#8 ("ENCRYPTED PRIVATE KEY"
  PEM), PBES2 with PBKDF2-HMAC-SHA256 (:data:`KDF_ITERATIONS` rounds, random
  16-byte salt) and AES-256-CBC.  cryptography's BestAvailableEncryption only
  uses 2048 PBKDF2 rounds, too few for a password-protected key kept in a
  database, so the container is built here; any PKCS#8 reader decrypts it
  (``openssl pkey -in key.pem``).  The password is NFC-normalised UTF-8.
* PDF: PAdES baseline B-B (SubFilter ETSI.CAdES.detached, SHA-256, signing
  certificate v2 attribute, signing time in the signature dictionary's /M),
  each signature an incremental update, approval (not certification)
  signatures, invisible.  B-T would need a time-stamping authority, which an
  offline county deployment does not have; so the signing time is the one the
  server claims, and once a signer certificate expires (730 days by default)
  its old signatures no longer verify as trusted -- long-term validation needs
  a TSA (B-T/B-LTA) and is not done here.
* Report data: CMS SignedData, detached, DER (RFC 5652; what OpenSSL calls
  ``.p7s``), ECDSA-SHA256, made with cryptography's PKCS7SignatureBuilder in
  binary mode (no S/MIME newline canonicalisation), carrying the signer and
  CA certificates.  Check it with OpenSSL::

      openssl cms -verify -binary -inform DER -in report.p7s \\
          -content report.json -CAfile ca.pem -purpose any -out /dev/null

  (``-purpose any`` because the signer certificates carry the document-signing
  extended key usage, not S/MIME's emailProtection.)

Verification of PDFs
--------------------
:func:`verify_pdf` uses pyHanko's validator (byte-range digest, CMS signature,
chain to the given trust roots without any network fetching, modification
analysis of later revisions) and adds checks of its own so that *every* byte
of the file is accounted for:

* the last signature must cover the whole file (nothing appended, nothing
  truncated);
* the only bytes a signature does not cover are its own /Contents hex string.
  For the last signature nothing else covers them, so the hex string must be
  in canonical form (``<`` + hex digits of one case + ``>``), the CMS blob
  must be DER, followed only by zero padding, with the exact structure
  pyHanko produces (one signer, digest algorithm lists consistent, no
  unsigned attributes, no CRLs, embedded certificates identical to the
  signer's or to the validated chain/trust roots).  A byte changed anywhere
  in the blob thus either breaks the signature or breaks that profile.

All public functions are synchronous; they run pyHanko's coroutines on a
private event loop (in a helper thread when called from a running loop), so
they can be called from FastAPI ``def`` endpoints, Celery tasks or the CLI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from io import BytesIO
from typing import Any, Awaitable, Callable, TypeVar
from uuid import UUID

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID, ObjectIdentifier

__all__ = [
    "CaMaterial",
    "KeyMaterial",
    "KDF_ITERATIONS",
    "SignerInfo",
    "SignerMaterial",
    "SigningError",
    "VerifyReport",
    "canonical_json",
    "create_ca",
    "issue_signer",
    "sign_data",
    "sign_pdf",
    "verify_data",
    "verify_pdf",
]

#: PBKDF2-HMAC-SHA256 rounds protecting private keys at rest (OWASP 2023
#: figure for PBKDF2-SHA256).  Unlocking a key costs ~0.2-0.4 s of CPU.
KDF_ITERATIONS = 600_000

# RFC 9336 id-kp-documentSigning, and Microsoft's Document Signing EKU that
# Acrobat and Windows recognise for the same purpose.
_EKU_DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
_EKU_MS_DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.4.1.311.10.3.12")

_CLOCK_SKEW = timedelta(minutes=5)


class SigningError(Exception):
    """A signature could not be made (wrong password, unusable key or
    certificate, unsignable PDF).  ``str(exc)`` is safe to show the user."""


@dataclass(frozen=True)
class KeyMaterial:
    """A certificate and its private key (PEM, the key encrypted with its holder's password)."""

    cert_pem: bytes
    key_pem_encrypted: bytes


# The two roles hold the same material; the names say which one a function wants.
CaMaterial = KeyMaterial
SignerMaterial = KeyMaterial


@dataclass
class SignerInfo:
    name: str  # certificate subject common name, e.g. 王医生
    field: str  # PDF signature field name
    signed_at: datetime | None  # claimed by the signer (no TSA), UTC
    intact: bool  # signed bytes unchanged and signature value correct
    trusted: bool  # certificate chains to one of the trusted CAs
    covers_whole_document: bool  # nothing follows this signature
    institution: str = ""  # certificate subject organisation
    username: str = ""  # certificate subject UID
    reason: str = ""  # /Reason of the signature dictionary


@dataclass
class VerifyReport:
    ok: bool
    signers: list[SignerInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# small helpers

T = TypeVar("T")


def _run(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even when the
    calling thread already runs an event loop (then in a helper thread)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str) or password == "":
        raise SigningError("a non-empty password is required")
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _encrypt_private_key(key: ec.EllipticCurvePrivateKey, password: str) -> bytes:
    """Encrypted PKCS#8 PEM: PBES2(PBKDF2-HMAC-SHA256, AES-256-CBC)."""
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, iv = os.urandom(16), os.urandom(16)
    kek = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=salt, iterations=KDF_ITERATIONS
    ).derive(_password_bytes(password))
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    info = asn1_keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": {
                "algorithm": "pbes2",
                "parameters": {
                    "key_derivation_func": {
                        "algorithm": "pbkdf2",
                        "parameters": {
                            "salt": asn1_algos.Pbkdf2Salt(
                                name="specified", value=salt
                            ),
                            "iteration_count": KDF_ITERATIONS,
                            "prf": {"algorithm": "sha256"},
                        },
                    },
                    "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
                },
            },
            "encrypted_data": ciphertext,
        }
    )
    return asn1_pem.armor("ENCRYPTED PRIVATE KEY", info.dump())


def _load_private_key(key_pem: bytes, password: str):
    pw = _password_bytes(password)
    try:
        return serialization.load_pem_private_key(key_pem, password=pw)
    except ValueError as exc:  # bad decrypt / padding / garbage after decrypt
        raise SigningError("wrong signing password") from exc
    except TypeError as exc:  # key stored unencrypted: refuse it
        raise SigningError("the stored private key is not encrypted") from exc
    except Exception as exc:  # noqa: BLE001 - unsupported format etc.
        raise SigningError(f"unreadable private key: {exc}") from exc


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except Exception as exc:  # noqa: BLE001
        raise SigningError(f"unreadable {what} certificate: {exc}") from exc


def not_after(cert_pem: bytes) -> datetime:
    """The last moment a certificate is valid (UTC)."""
    return _load_cert(cert_pem, "certificate").not_valid_after_utc


def _same_public_key(cert: x509.Certificate, key) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _cert_to_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _serial() -> int:
    return x509.random_serial_number()


# --------------------------------------------------------------------------
# CA and signer certificates


def create_ca(
    common_name: str, organisation: str, password: str, days: int = 3650
) -> CaMaterial:
    """Self-signed institutional root CA (path length 0: it only issues
    signer certificates).  The key is encrypted with ``password``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CaMaterial(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem_encrypted=_encrypt_private_key(key, password),
    )


# A signer signs documents and nothing else (nonRepudiation = content_commitment).
_SIGNER_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=True, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)


def _ca_key(ca: CaMaterial, ca_password: str):
    try:
        return _load_private_key(ca.key_pem_encrypted, ca_password)
    except SigningError as exc:
        if str(exc) == "wrong signing password":
            raise SigningError("wrong CA password") from exc
        raise


def issue_signer(
    ca: CaMaterial,
    ca_password: str,
    *,
    username: str,
    display_name: str,
    institution: str,
    signer_password: str,
    days: int = 730,
) -> SignerMaterial:
    """Issue a document-signing certificate to a specialist.

    Subject: CN=display_name (e.g. 王医生), O=institution, UID=username.
    The validity never exceeds the CA's.  A wrong ``ca_password`` raises
    :class:`SigningError`.
    """
    ca_cert = _load_cert(ca.cert_pem, "CA")
    ca_key = _ca_key(ca, ca_password)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, institution),
            x509.NameAttribute(NameOID.USER_ID, username),
            x509.NameAttribute(NameOID.COMMON_NAME, display_name),
        ]
    )
    now = _now()
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _SIGNER_KEY_USAGE,
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([_EKU_DOCUMENT_SIGNING, _EKU_MS_DOCUMENT_SIGNING]),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return SignerMaterial(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem_encrypted=_encrypt_private_key(key, signer_password),
    )


def _unlock_signer(signer: SignerMaterial, password: str, ca_cert_pem: bytes | None):
    """Decrypt the key and sanity-check the certificate before signing."""
    cert = _load_cert(signer.cert_pem, "signer")
    key = _load_private_key(signer.key_pem_encrypted, password)
    if not _same_public_key(cert, key):
        raise SigningError("the private key does not belong to the certificate")
    now = _now()
    if not (cert.not_valid_before_utc <= now + _CLOCK_SKEW) or cert.not_valid_after_utc < now:
        raise SigningError("the signer certificate is not valid at this time")
    ca_cert = None
    if ca_cert_pem is not None:
        ca_cert = _load_cert(ca_cert_pem, "CA")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise SigningError("the signer certificate was not issued by this CA") from exc
    return cert, key, ca_cert


# --------------------------------------------------------------------------
# PDF signing


def sign_pdf(
    pdf: bytes,
    signer: SignerMaterial,
    signer_password: str,
    ca_cert_pem: bytes,
    *,
    field_name: str,
    reason: str,
    location: str = "",
) -> bytes:
    """Add a PAdES B-B signature in a new invisible field ``field_name`` as
    an incremental update and return the new file.  Earlier signatures stay
    valid.  Raises :class:`SigningError` (wrong password: exactly
    ``SigningError("wrong signing password")``)."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    cert, key, ca_cert = _unlock_signer(signer, signer_password, ca_cert_pem)
    pdf_signer = signers.SimpleSigner(
        signing_cert=_cert_to_asn1(cert),
        signing_key=asn1_keys.PrivateKeyInfo.load(
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ),
        # embedded in the CMS so that other viewers can build the chain
        cert_registry=SimpleCertificateStore.from_certs([_cert_to_asn1(ca_cert)]),
    )
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        reason=reason or None,
        location=location or None,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
    )
    try:
        writer = IncrementalPdfFileWriter(BytesIO(pdf), strict=True)
        if _field_is_signed(writer, field_name):
            raise SigningError(f"the field {field_name!r} is already signed")

        async def go():
            return await signers.PdfSigner(meta, signer=pdf_signer).async_sign_pdf(
                writer, existing_fields_only=False
            )

        out = _run(go)
    except SigningError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyHanko/parse errors
        raise SigningError(f"cannot sign this PDF: {exc}") from exc
    return out.getvalue()


def _field_is_signed(writer, field_name: str) -> bool:
    from pyhanko.sign.fields import enumerate_sig_fields

    for name, value, _ref in enumerate_sig_fields(writer.prev, filled_status=None):
        if name == field_name and value is not None:
            return True
    return False


# --------------------------------------------------------------------------
# PDF verification


def _validation_context(trusted_ca_pems: list[bytes]):
    from pyhanko_certvalidator import ValidationContext

    roots = [_pem_to_asn1(p) for p in trusted_ca_pems]
    return ValidationContext(trust_roots=roots, allow_fetching=False)


def _pem_to_asn1(pem_bytes: bytes) -> asn1_x509.Certificate:
    data = pem_bytes
    if asn1_pem.detect(data):
        _, _, data = asn1_pem.unarmor(data)
    return asn1_x509.Certificate.load(data)


def _subject_field(cert: asn1_x509.Certificate, key: str) -> str:
    try:
        value = cert.subject.native.get(key, "")
    except Exception:  # noqa: BLE001
        return ""
    if isinstance(value, list):
        value = value[-1] if value else ""
    return str(value or "")


def verify_pdf(pdf: bytes, trusted_ca_pems: list[bytes]) -> VerifyReport:
    """Check every signature of ``pdf`` against the trusted CA certificates.

    ``ok`` is True only if there is at least one signature, every signature
    is intact, trusted and allowed by the later revisions, and the last one
    covers the whole file.  Never raises for a bad file: problems are listed
    in ``problems``.
    """
    report = VerifyReport(ok=False)
    try:
        _verify_pdf_into(report, pdf, trusted_ca_pems)
    except Exception as exc:  # noqa: BLE001 - mangled input must not raise
        report.problems.append(
            f"the file is damaged or was altered and cannot be verified ({_describe(exc)})"
        )
    report.ok = (
        bool(report.signers)
        and not report.problems
        and all(s.intact and s.trusted for s in report.signers)
        and report.signers[-1].covers_whole_document
    )
    if not report.signers and not report.problems:
        report.problems.append("the document carries no signature")
    return report


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _verify_pdf_into(report: VerifyReport, pdf: bytes, trusted_ca_pems: list[bytes]) -> None:
    opened = _embedded_signatures(report, pdf, trusted_ca_pems)
    if opened is None:
        return
    pdf, embedded, trusted_der = opened
    # a signature whose field was hidden by a later change is caught by the whole-file
    # rule (_judge_status): the last *visible* signature would not reach EOF
    for index, emb in enumerate(embedded):
        _check_signature(report, bytes(pdf), emb, is_last=index == len(embedded) - 1,
                         trusted_ca_pems=trusted_ca_pems, trusted_der=trusted_der)


def _signed_range_end(sig) -> int:
    try:
        br = [int(v) for v in sig.byte_range]
        return br[2] + br[3]
    except Exception:  # noqa: BLE001
        return -1


def _embedded_signatures(report: VerifyReport, pdf: bytes, trusted_ca_pems: list[bytes]):
    """(pdf bytes, signatures in signing order, trusted CA DER set), or None with the problem noted."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    if not isinstance(pdf, (bytes, bytearray)) or not pdf.startswith(b"%PDF-"):
        report.problems.append("the file is not a PDF")
        return None
    pdf = bytes(pdf)
    trusted_der = set()
    for pem_bytes in trusted_ca_pems:
        try:
            trusted_der.add(_pem_to_asn1(pem_bytes).dump())
        except Exception as exc:  # noqa: BLE001
            report.problems.append(f"a trusted CA certificate is unreadable: {_describe(exc)}")
            return None
    try:
        reader = PdfFileReader(BytesIO(pdf), strict=True)
        embedded = list(reader.embedded_signatures)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"the file is not a readable PDF: {_describe(exc)}")
        return None
    if not embedded:
        report.problems.append("the document carries no signature")
        return None
    embedded.sort(key=_signed_range_end)
    return pdf, embedded, trusted_der


def _check_signature(report: VerifyReport, pdf: bytes, emb, *, is_last: bool, trusted_ca_pems: list[bytes],
                     trusted_der: set) -> None:
    from pyhanko.sign.validation import async_validate_pdf_signature

    field_name = str(emb.field_name)
    info = SignerInfo(
        name="?", field=field_name, signed_at=None, intact=False,
        trusted=False, covers_whole_document=False,
    )
    report.signers.append(info)
    label = f"signature {field_name!r}"
    try:
        cert = emb.signer_cert
        info.name = _subject_field(cert, "common_name") or "?"
        info.institution = _subject_field(cert, "organization_name")
        info.username = _subject_field(cert, "user_id")
        label = f"signature {field_name!r} by {info.name}"
        info.reason = str(emb.sig_object.get("/Reason", "") or "")
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"{label}: no usable signer certificate ({_describe(exc)})")
        return
    if emb.sig_object_type != "/Sig":
        report.problems.append(f"{label}: document timestamps are not supported")
        return

    vc = _validation_context(trusted_ca_pems)

    async def go(emb=emb, vc=vc):
        try:
            return await async_validate_pdf_signature(emb, signer_validation_context=vc)
        finally:
            await vc.aclose()

    try:
        status = _run(go)
    except Exception as exc:  # noqa: BLE001 - broken CMS, bad byte range...
        report.problems.append(f"{label}: the signature cannot be validated ({_describe(exc)})")
        return
    _judge_status(report, info, label, status, pdf, emb, is_last=is_last)
    # the /Contents string is covered by later signatures only: for the
    # last one, every byte of it must be accounted for here
    for problem in _contents_problems(pdf, emb, status, trusted_der):
        report.problems.append(f"{label}: {problem}")
        info.intact = False


def _judge_status(report: VerifyReport, info: SignerInfo, label: str, status, pdf: bytes, emb, *,
                  is_last: bool) -> None:
    """pyHanko's verdict on one signature as the signer's fields and problems people read."""
    from pyhanko.sign.validation.status import SignatureCoverageLevel

    info.signed_at = status.signer_reported_dt
    info.intact = bool(status.intact and status.valid)
    info.trusted = bool(status.trusted)
    info.covers_whole_document = status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    # One cause, said once: altered content makes every later check fail too, and "not
    # trusted" would send the reader looking at certificates when the text was changed.
    if not status.intact:
        report.problems.append(f"{label}: 内容已被改动 content altered (the signed bytes no longer match)")
    elif not status.valid:
        report.problems.append(f"{label}: 签名值无效 the signature value does not verify")
    elif not status.trusted:
        report.problems.append(
            f"{label}: 签名证书不受信任 the signer certificate does not chain to a trusted CA"
            " (or is expired, not yet valid or not usable for signing)"
        )
    if info.intact and info.trusted and not status.bottom_line:
        report.problems.append(
            f"{label}: the document was changed after this signature in a way"
            " that is not allowed"
        )
    if is_last and not info.covers_whole_document:
        br_end = _signed_range_end(emb)
        report.problems.append(
            f"{label}: the file was modified after the last signature"
            f" ({len(pdf) - br_end:+d} bytes beyond the signed range)"
            if br_end >= 0
            else f"{label}: the file was modified after the last signature"
        )


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _der_length(blob: bytes) -> int:
    """Total length of the DER TLV at the start of ``blob`` (definite form)."""
    if len(blob) < 2:
        raise ValueError("truncated")
    first = blob[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or len(blob) < 2 + n:
        raise ValueError("not a definite DER length")
    length = int.from_bytes(blob[2 : 2 + n], "big")
    if length < 0x80 or blob[2] == 0:
        raise ValueError("non-minimal DER length")
    return 2 + n + length


def _contents_problems(pdf: bytes, emb, status, trusted_der: set[bytes]) -> list[str]:
    """Everything not protected by the signature value itself must match the
    exact profile pyHanko produces (see the module docstring)."""
    problems: list[str] = []
    try:
        a, b = int(emb.byte_range[1]), int(emb.byte_range[2])
        gap = pdf[a:b]
    except Exception:  # noqa: BLE001
        return ["malformed /ByteRange"]
    inner = gap[1:-1]
    if (
        len(gap) < 4
        or gap[:1] != b"<"
        or gap[-1:] != b">"
        or len(inner) % 2
        or not set(inner) <= _HEX
        or (inner != inner.lower() and inner != inner.upper())
    ):
        return ["the signature container (/Contents) is not a canonical hex string"]
    blob = bytes.fromhex(inner.decode("ascii"))
    if blob != emb.pkcs7_content:
        return ["the signature container does not match the byte range gap"]
    try:
        length = _der_length(blob)
    except ValueError as exc:
        return [f"the signature container is not DER ({exc})"]
    der, pad = blob[:length], blob[length:]
    if len(der) != length or pad.strip(b"\x00"):
        problems.append("unexpected bytes after the CMS structure in /Contents")
    try:
        ci = asn1_cms.ContentInfo.load(der, strict=True)
        if ci.dump(force=True) != der:
            problems.append("the CMS structure is not in canonical DER form")
        problems += _cms_profile_problems(ci, emb, status, trusted_der)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the CMS structure is malformed ({_describe(exc)})")
    return problems


def _cms_profile_problems(ci, emb, status, trusted_der: set[bytes]) -> list[str]:
    problems: list[str] = []
    if ci["content_type"].native != "signed_data":
        return ["the CMS object is not SignedData"]
    sd = ci["content"]
    sis = sd["signer_infos"]
    if len(sis) != 1:
        return ["the CMS object must carry exactly one signer"]
    si = sis[0]
    if sd["version"].native != "v1" or si["version"].native != "v1":
        problems.append("unexpected CMS version numbers")
    if si["sid"].name != "issuer_and_serial_number":
        problems.append("unexpected signer identifier form")
    digests = sd["digest_algorithms"]
    if len(digests) != 1 or digests[0].dump() != si["digest_algorithm"].dump():
        problems.append("the CMS digest algorithm lists are inconsistent")
    eci = sd["encap_content_info"]
    if eci["content_type"].native != "data" or eci["content"].native is not None:
        problems.append("the CMS object must be a detached signature over data")
    if not isinstance(sd["crls"], asn1_core.Void):
        problems.append("unexpected revocation data inside the CMS object")
    if not isinstance(si["unsigned_attrs"], asn1_core.Void):
        problems.append("unexpected unsigned attributes in the signature")
    digest = si["digest_algorithm"]["algorithm"].native
    sig_alg = si["signature_algorithm"]
    key_algo = emb.signer_cert.public_key.algorithm  # 'ec' / 'rsa'
    allowed = {f"{digest}_ecdsa"} if key_algo == "ec" else {f"{digest}_rsa", "rsassa_pss"}
    if sig_alg["algorithm"].native not in allowed or (
        key_algo == "ec" and sig_alg["parameters"].native is not None
    ):
        problems.append("the signature algorithm does not match the key and digest")
    # certificates outside the signed attributes: only the signer's, the
    # validated chain's and trusted roots, byte for byte.  (Without a
    # validated chain the signature is already reported as untrusted.)
    known = set(trusted_der)
    known.add(emb.signer_cert.dump())
    path = getattr(status, "validation_path", None)
    if path is not None:
        known.update(c.dump() for c in path.iter_certs(include_root=True))
    certs = sd["certificates"]
    if path is not None and not isinstance(certs, asn1_core.Void):
        for choice in certs:
            if choice.name != "certificate" or choice.chosen.dump() not in known:
                problems.append("an embedded certificate was altered or is unexpected")
                break
    return problems


# --------------------------------------------------------------------------
# detached signatures over report data


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON of report data: keys sorted, no insignificant
    whitespace, non-ASCII kept as UTF-8 (not \\u escapes), NaN/Infinity
    refused.  datetime/date become ISO 8601 strings and UUIDs strings;
    anything else non-JSON raises TypeError.  (Close to RFC 8785 for the
    strings and integers reports contain; floats use Python's shortest repr,
    which RFC 8785 formats differently for exponents.)"""

    def default(value: Any) -> Any:
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        if isinstance(value, UUID):
            return str(value)
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return json.dumps(
        obj,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        default=default,
    ).encode("utf-8")


def sign_data(data: bytes, signer: SignerMaterial, password: str) -> bytes:
    """Detached CMS SignedData (DER) over ``data`` by ``signer``; the
    signer's certificate is embedded.  Raises SigningError on a wrong
    password."""
    cert, key, _ = _unlock_signer(signer, password, None)
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(bytes(data))
        .add_signer(cert, key, hashes.SHA256())
    )
    return builder.sign(
        serialization.Encoding.DER,
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
    )


def verify_data(
    data: bytes, signature: bytes, cert_pem: bytes, trusted_ca_pems: list[bytes]
) -> bool:
    """True if ``signature`` (from :func:`sign_data`) is a valid detached CMS
    signature over exactly ``data``, made with the key of ``cert_pem``, whose
    certificate chains to one of ``trusted_ca_pems``.  Never raises."""
    try:
        from pyhanko.sign.validation.generic_cms import async_validate_detached_cms

        expected = _pem_to_asn1(cert_pem)
        ci = asn1_cms.ContentInfo.load(bytes(signature), strict=True)
        if ci["content_type"].native != "signed_data":
            return False
        sd = ci["content"]
        if len(sd["signer_infos"]) != 1:
            return False
        sid = sd["signer_infos"][0]["sid"]
        if sid.name != "issuer_and_serial_number" or (
            sid.chosen["serial_number"].native != expected.serial_number
            or sid.chosen["issuer"].dump() != expected.issuer.dump()
        ):
            return False
        vc = _validation_context(trusted_ca_pems)
        vc.certificate_registry.register(expected)

        async def go():
            try:
                return await async_validate_detached_cms(
                    bytes(data), sd, signer_validation_context=vc
                )
            finally:
                await vc.aclose()

        status = _run(go)
        return bool(
            status.intact
            and status.valid
            and status.trusted
            and status.signing_cert.dump() == expected.dump()
        )
    except Exception:  # noqa: BLE001 - any malformed input is "not valid"
        return False


def embedded_files(pdf: bytes) -> dict[str, bytes]:
    """The files embedded in a PDF's EmbeddedFiles name tree, {name: bytes}; {} when there
    are none or the file cannot be read (verification reports the PDF's own problems)."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    try:
        root = PdfFileReader(BytesIO(pdf), strict=False).root
        names = root["/Names"]["/EmbeddedFiles"]["/Names"]
    except Exception:
        return {}
    found = {}
    for index in range(0, len(names) - 1, 2):
        try:
            found[str(names[index])] = names[index + 1].get_object()["/EF"]["/F"].get_object().data
        except Exception:
            continue
    return found
