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


# Who may save measurements and key images into a study they may see: the people who read
# images (specialists) and who take them (radiographers). Coordinators route consults and
# are granted no images; admins keep accounts and oversee a subtree, they do not report;
# patient links and calling AEs only read. The document's observer is the user, so only a
# person who could be named as the one who measured may write it.
ANNOTATOR_ROLES = ("specialist", "radiographer")


def require_annotator(principal: Principal) -> None:
    """Raise NotPermitted unless this principal may save measurements and key images (the
    caller has already checked that it may see the study: an unseen study is "not found")."""
    if principal.kind != "user":
        raise NotPermitted("仅医务人员可保存测量和关键图像 / only staff save measurements and key images")
    if principal.role not in ANNOTATOR_ROLES:
        raise NotPermitted("仅阅片医生和技师可保存测量和关键图像 / only specialists and radiographers save "
                           "measurements and key images")
