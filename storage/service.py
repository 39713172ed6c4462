"""Tenancy registry: institutions of the referral tree and the DICOM nodes they own."""

from __future__ import annotations

import ipaddress
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import Conflict, Invalid, NotFound
from storage.models import LEVELS, DicomNode, Institution

_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
# PS3.5 AE title: up to 16 characters of the default repertoire, no backslash or control chars.
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def get_institution(*, session: Session, code: str) -> Institution:
    """Gets an institution by its code or raises NotFound."""
    found = session.scalar(select(Institution).where(Institution.code == code))
    if found is None:
        raise NotFound(f"unknown institution {code!r}")
    return found


def set_institution_details(*, session: Session, code: str, department: str | None = None,
                            address: str | None = None, name_en: str | None = None,
                            patient_ids_are_resident_ids: bool | None = None) -> Institution:
    """What the report header prints under the institution's name, and whether the
    institution's PatientIDs are 居民身份证号 (then they join its patients to persons)."""
    institution = get_institution(session=session, code=code)
    if patient_ids_are_resident_ids is not None:
        institution.patient_ids_are_resident_ids = patient_ids_are_resident_ids
    if department is not None:
        institution.department = department.strip()[:100]
    if address is not None:
        institution.address = address.strip()[:300]
    if name_en is not None:
        institution.name_en = name_en.strip()[:200]
    session.flush()
    return institution


def add_institution(*, session: Session, code: str, name: str, level: str,
                    name_en: str = "", parent_code: str | None = None) -> Institution:
    """Adds an institution to the referral tree."""
    if not _CODE.match(code):
        raise Invalid(f"机构代码须为1-32位字母、数字或 . _ - / institution code {code!r} must be 1-32 letters, "
                      "digits, '.', '_' or '-'")
    if level not in LEVELS:
        raise Invalid(f"级别无效 / level must be one of {', '.join(LEVELS)}, not {level!r}")
    if not name.strip():
        raise Invalid("请填写机构名称 / an institution needs a name")
    if session.scalar(select(Institution.id).where(Institution.code == code)) is not None:
        raise Conflict(f"机构代码已存在 / institution {code!r} already exists")
    parent = get_institution(session=session, code=parent_code) if parent_code else None
    institution = Institution(code=code, name_zh=name.strip(), name_en=name_en.strip(), level=level,
                              parent_id=parent.id if parent else None, active=True)
    session.add(institution)
    session.flush()
    return institution


def ancestor_ids(session: Session, institution_id: int) -> list[int]:
    """The institutions above this one in the referral tree, nearest first (a cycle stops it)."""
    found: list[int] = []
    current = session.get(Institution, institution_id)
    while current is not None and current.parent_id is not None and current.parent_id not in found:
        found.append(current.parent_id)
        current = session.get(Institution, current.parent_id)
    return found


def tree_direction(session: Session, source: Institution, target: Institution) -> str | None:
    """"up" to an ancestor or a partner hospital (上转), "down" to a descendant (下转), None when
    the target is neither (or is the source): consults and referrals follow the same tree."""
    if target.id == source.id:
        return None
    if target.id in ancestor_ids(session, source.id) or target.level == "partner":
        return "up"
    if source.id in ancestor_ids(session, target.id):
        return "down"
    return None


def require_tree_direction(session: Session, source: Institution, target: Institution, *, to_itself: str) -> str:
    """tree_direction, or Invalid (422) saying why there is none: `to_itself`, in the domain's
    words, when the target is the source; else that the target is off the source's paths."""
    if target.id == source.id:
        raise Invalid(to_itself)
    direction = tree_direction(session, source, target)
    if direction is None:
        raise Invalid(f"{target.name_zh}不在本机构的上转或下转路径上 / {target.code} is neither above nor below "
                      f"{source.code} in the referral tree")
    return direction


def list_institutions(*, session: Session) -> list[Institution]:
    """Lists every institution, parents first."""
    return list(session.scalars(select(Institution).order_by(Institution.parent_id.nullsfirst(), Institution.code)))


def set_institution_active(*, session: Session, code: str, active: bool) -> Institution:
    """Disables (or re-enables) an institution; its data stays."""
    institution = get_institution(session=session, code=code)
    institution.active = active
    return institution


def normalise_ae_title(ae_title: str) -> str:
    title = ae_title.strip()
    if not _AE.match(title):
        raise Invalid(f"AE 名称须为1-16个可打印字符 / AE title {ae_title!r} must be 1-16 printable characters "
                      "without '\\'")
    return title


AE_PERMISSIONS = ("store", "query", "retrieve")


def parse_permissions(values) -> str:
    """"store,query" or ["store", "query"] -> the canonical comma list; unknown words refused."""
    words = [w.strip().lower() for v in ([values] if isinstance(values, str) else values) for w in v.split(",")]
    unknown = sorted({w for w in words if w and w not in AE_PERMISSIONS})
    if unknown:
        raise Invalid(f"unknown AE permission(s) {', '.join(unknown)}: use {', '.join(AE_PERMISSIONS)}")
    chosen = [p for p in AE_PERMISSIONS if p in words]
    if not chosen:
        raise Invalid("至少选择一项权限 / an AE needs at least one permission (store, query, retrieve)")
    return ",".join(chosen)


def parse_networks(values) -> str:
    """Hosts or CIDR networks -> the canonical comma list (a bare address is a /32 or /128)."""
    networks = []
    for value in values or ():
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise Invalid(f"不是IP地址或网段 / {value!r} is not an IP address or CIDR network (e.g. 10.1.2.0/24)") from None
    return ",".join(dict.fromkeys(networks))


def address_allowed(networks: list[str], address: str | None) -> bool:
    """Whether an association from `address` may use an AE bound to `networks` (empty: any)."""
    if not networks:
        return True
    try:
        host = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    if host.version == 6 and host.ipv4_mapped:
        host = host.ipv4_mapped
    return any(host in ipaddress.ip_network(n) for n in networks)


def add_node(*, session: Session, ae_title: str, institution_code: str,
             host: str | None = None, port: int | None = None, can=("store",), allow=()) -> DicomNode:
    """Registers a calling AE for an institution (host/port make it a C-MOVE destination).
    It may only store unless `can` says more; `allow` binds it to networks."""
    title = normalise_ae_title(ae_title)
    if (host is None) != (port is None):
        raise Invalid("主机和端口须同时填写或都不填 / give both --host and --port, or neither")
    if port is not None and not 0 < port < 65536:
        raise Invalid(f"端口超出范围 / port {port} is out of range")
    if session.scalar(select(DicomNode.id).where(DicomNode.ae_title == title)) is not None:
        raise Conflict(f"该 AE 名称已登记 / AE title {title!r} is already registered")
    institution = get_institution(session=session, code=institution_code)
    node = DicomNode(ae_title=title, institution_id=institution.id, host=host, port=port, enabled=True,
                     permissions=parse_permissions(can), allowed_networks=parse_networks(allow))
    session.add(node)
    session.flush()
    return node


def get_node(*, session: Session, ae_title: str) -> DicomNode:
    """Gets a registered AE by title or raises NotFound."""
    node = session.scalar(select(DicomNode).where(DicomNode.ae_title == ae_title.strip()))
    if node is None:
        raise NotFound(f"unknown AE title {ae_title!r}")
    return node


def find_enabled_node(*, session: Session, ae_title: str) -> DicomNode | None:
    """The enabled node with this title whose institution is active, else None."""
    node = session.scalar(select(DicomNode).where(DicomNode.ae_title == ae_title.strip()))
    if node is None or not node.enabled or not node.institution.active:
        return None
    return node


def list_nodes(*, session: Session) -> list[DicomNode]:
    """Lists registered AEs."""
    return list(session.scalars(select(DicomNode).order_by(DicomNode.ae_title)))


def set_node_enabled(*, session: Session, ae_title: str, enabled: bool) -> DicomNode:
    """Disables (or re-enables) an AE: associations from it are then refused."""
    node = get_node(session=session, ae_title=ae_title)
    node.enabled = enabled
    return node


def set_node_access(*, session: Session, ae_title: str, can=None, allow=None, allow_any: bool = False) -> DicomNode:
    """Changes what an AE may do and where it may connect from."""
    node = get_node(session=session, ae_title=ae_title)
    if can is not None:
        node.permissions = parse_permissions(can)
    if allow_any:
        node.allowed_networks = ""
    elif allow:
        node.allowed_networks = parse_networks(allow)
    session.flush()
    return node
