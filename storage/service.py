"""Tenancy registry: institutions of the referral tree and the DICOM nodes they own."""

from __future__ import annotations

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


def add_institution(*, session: Session, code: str, name: str, level: str,
                    name_en: str = "", parent_code: str | None = None) -> Institution:
    """Adds an institution to the referral tree."""
    if not _CODE.match(code):
        raise Invalid(f"institution code {code!r} must be 1-32 letters, digits, '.', '_' or '-'")
    if level not in LEVELS:
        raise Invalid(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    if not name.strip():
        raise Invalid("an institution needs a name")
    if session.scalar(select(Institution.id).where(Institution.code == code)) is not None:
        raise Conflict(f"institution {code!r} already exists")
    parent = get_institution(session=session, code=parent_code) if parent_code else None
    institution = Institution(code=code, name_zh=name.strip(), name_en=name_en.strip(), level=level,
                              parent_id=parent.id if parent else None, active=True)
    session.add(institution)
    session.flush()
    return institution


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
        raise Invalid(f"AE title {ae_title!r} must be 1-16 printable characters without '\\'")
    return title


def add_node(*, session: Session, ae_title: str, institution_code: str,
             host: str | None = None, port: int | None = None) -> DicomNode:
    """Registers a calling AE for an institution (host/port make it a C-MOVE destination)."""
    title = normalise_ae_title(ae_title)
    if (host is None) != (port is None):
        raise Invalid("give both --host and --port, or neither")
    if port is not None and not 0 < port < 65536:
        raise Invalid(f"port {port} is out of range")
    if session.scalar(select(DicomNode.id).where(DicomNode.ae_title == title)) is not None:
        raise Conflict(f"AE title {title!r} is already registered")
    institution = get_institution(session=session, code=institution_code)
    node = DicomNode(ae_title=title, institution_id=institution.id, host=host, port=port, enabled=True)
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
