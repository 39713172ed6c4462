"""Who may *do* what with images (storage/access.py says who may *see* which studies).

Calling AEs: what a registered AE may do (store, query, retrieve) is its node's `can` list,
checked per request by imaging/scp.py."""

from __future__ import annotations

from storage.access import Principal
from storage.errors import NotPermitted


# Who may add images: the people who take them (radiographers) and the institution's
# admins, always into their own institution (ingest stamps it). Specialists and
# coordinators read and organise; a consult's material comes from the requesting side.
UPLOAD_ROLES = ("radiographer", "admin")


def require_uploader(principal: Principal) -> None:
    if principal.kind != "user" or principal.institution_id is None:
        raise NotPermitted("无权上传 / only users of an institution can store instances")
    if principal.role not in UPLOAD_ROLES:
        raise NotPermitted("仅技师和管理员可上传影像 / only radiographers and admins may upload images")
