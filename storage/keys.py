"""Every object-store key layout in one place: what lives where in the bucket (or under
<data_dir>/objects), and how a UID becomes a key component.

    dicom/{study}/{series}/{sop}.{sha256[:16]}.dcm        an instance, one version per hash
    derived/{study}/{series}/series.jpg                   the series thumbnail
    derived/{study}/{series}/{sop}.preview.jpg            an instance's preview
    derived/{study}/{series}/{sop}/screen/{frame}-{width}-{sha256[:16]}.jpg   a phone-sized frame
    derived/{study}/film/share-{share_id}.pdf             the A4 film sheet of a share
    reports/{consult_id}/v{number}-{kind}.pdf             a signed report version
    recordings/{consult_id}/{room_session}.mp4            a live-consult recording
    consents/{consult_id}/{sha256[:16]}.{ext}             a scanned informed-consent form
    audit/checkpoint.json                                 the audit chain's MAC'd checkpoint

One folder per series, not per instance: a new folder costs a directory fsync of its parent
on the filesystem store, which per instance would be a sync too many.
"""

from __future__ import annotations

import hashlib
import re

_CONFORMING_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

AUDIT_CHECKPOINT = "audit/checkpoint.json"


def conforming_uid(value: str) -> bool:
    """A UID as PS3.5 9.1 defines it: digits and dots, no leading zeros, at most 64 chars."""
    return len(value) <= 64 and _CONFORMING_UID.fullmatch(value) is not None


def uid_part(uid: str) -> str:
    """A UID as a key component: itself when it conforms, else a digest (a sloppy UID kept
    as a device sent it could hold anything a path should not)."""
    if conforming_uid(uid):
        return uid
    return "u" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
    return f"dicom/{uid_part(study_uid)}/{uid_part(series_uid)}/{uid_part(sop_uid)}.{sha256[:16]}.dcm"


def series_thumbnail(study_uid: str, series_uid: str) -> str:
    return f"derived/{uid_part(study_uid)}/{uid_part(series_uid)}/series.jpg"


def instance_preview(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"derived/{uid_part(study_uid)}/{uid_part(series_uid)}/{uid_part(sop_uid)}.preview.jpg"


def screen_frame(study_uid: str, series_uid: str, sop_uid: str, frame: int, width: int, sha256: str) -> str:
    return (f"derived/{uid_part(study_uid)}/{uid_part(series_uid)}/{uid_part(sop_uid)}"
            f"/screen/{frame}-{width}-{sha256[:16]}.jpg")


def film_sheet(study_uid: str, share_id: int) -> str:
    return f"derived/{uid_part(study_uid)}/film/share-{share_id}.pdf"


def report_version(consult_id: int, number: int, kind: str) -> str:
    return f"reports/{consult_id}/v{number}-{kind}.pdf"


def recording(consult_id: int, room_session: str) -> str:
    return f"recordings/{consult_id}/{room_session}.mp4"


def consent_form(consult_id: int, sha256: str, extension: str) -> str:
    return f"consents/{consult_id}/{sha256[:16]}.{extension}"
