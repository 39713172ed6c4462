"""QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered from the index."""

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imaging import query
from imaging.dicomweb.common import (
    add_read_route, audit_request, AVAILABLE_TRANSFER_SYNTAX, base_url, check_uid, choose, instance_url,
    JSON_OFFERS, json_response, MAX_RESULTS, number_param, RETRIEVE_URL, series_url,
    study_url
)
from imaging.dataset import INSTANCE_PREFIX
from imaging.models import Instance, Series, Study
from storage import access
from storage.access import Principal, Scope
from storage.errors import BadRequest

# -- QIDO-RS ----------------------------------------------------------------------------

SEQUENCE_CANDIDATES = 20_000  # instances a sequence-matching search reads the stored JSON of, at most
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}
_RETURN_LEVELS = {  # (level, how much of the hierarchy the URL fixes) -> levels returned
    ("STUDY", 0): ("STUDY",),
    ("SERIES", 0): ("STUDY", "SERIES"), ("SERIES", 1): ("SERIES",),
    ("IMAGE", 0): ("STUDY", "SERIES", "IMAGE"), ("IMAGE", 1): ("SERIES", "IMAGE"), ("IMAGE", 2): ("IMAGE",),
}
_RANK = {level: rank for rank, level in enumerate(query.LEVELS)}


@dataclass
class Search:
    """A parsed QIDO-RS request."""

    level: str
    fixed: int  # 0: all, 1: within a study, 2: within a series
    match: dict[str, str] = field(default_factory=dict)  # indexed keyword -> DICOM matching value
    sequences: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # IMAGE level
    include: list[str] = field(default_factory=list)  # extra return attributes, as tags
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def attribute_tag(name: str) -> str:
    """An attribute named by keyword or 8-hex tag, as the tag; 400 when unknown."""
    tag = query.attribute_tag(name)
    if tag is None:
        raise BadRequest(f"{name[:80]!r} is neither a DICOM attribute keyword nor a tag")
    return tag


def _keyword(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or ""


def _vr(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"


def _qido_value(name: str, value: str) -> str:
    """UID and code lists may be comma separated in QIDO-RS (PS3.18 8.3.4.1), backslash in DICOM."""
    tag = query.attribute_tag(name.split(".")[-1])
    return value.replace(",", "\\") if tag and _vr(tag) in ("UI", "CS") else value


def _add_matches(search: Search, pairs: list[tuple[str, str]]) -> None:
    """The query string's matching keys, parsed as C-FIND identifiers are (query.parse_identifier)."""
    try:
        wanted = query.parse_identifier([(name, _qido_value(name, value)) for name, value in pairs], search.level)
    except query.UnknownAttribute as exc:
        raise BadRequest(f"{str(exc)[:80]!r} is neither a DICOM attribute keyword nor a tag") from None
    search.sequences = wanted.sequences
    search.warnings += [f"matching on {name} is not supported at this level and was ignored" for name in wanted.ignored]
    for keyword, value in wanted.keys.items():
        attr = query.ATTRIBUTES.get(keyword)
        if attr is None or attr.column is None or _RANK[attr.level] > _RANK[search.level]:
            search.warnings.append(f"matching on {keyword} is not supported at this level and was ignored")
            continue
        search.match[keyword] = value


def _add_includes(search: Search, value: str) -> None:
    for name in (v.strip() for v in value.split(",")):
        if not name:
            continue
        if name.lower() == "all":
            search.include_all = True
        else:
            search.include.append(attribute_tag(name.split(".")[0]))


def parse_search(params, level: str, fixed: int) -> Search:
    """The matching keys, includefield, limit/offset of a QIDO-RS query string."""
    search = Search(level, fixed)
    pairs = []
    for name, value in params.multi_items():
        lower = name.lower()
        if lower == "includefield":
            _add_includes(search, value)
        elif lower == "fuzzymatching":
            if value.strip().lower() == "true":
                search.warnings.append("fuzzy matching is not supported; literal matching was performed")
        elif lower not in _RESERVED:
            pairs.append((name, value))
    _add_matches(search, pairs)
    search.limit = number_param(params.get("limit"), "limit", minimum=1)
    search.offset = number_param(params.get("offset"), "offset", minimum=0) or 0
    return search


def return_keywords(search: Search) -> list[str]:
    """Indexed attributes to return: the defaults of each level shown, or all with includefield=all."""
    levels = _RETURN_LEVELS[(search.level, search.fixed)]
    if search.include_all:
        shown = {"PATIENT", *levels}
        keywords = [k for k, a in query.ATTRIBUTES.items() if a.level in shown and a.kind != "count"]
    else:
        keywords = [k for level in levels for k in query.DEFAULT_RETURN[level]]
    extra = [_keyword(tag) for tag in search.include]
    indexed = [k for k in extra if k in query.ATTRIBUTES and _RANK[query.ATTRIBUTES[k].level] <= _RANK[search.level]]
    return list(dict.fromkeys(keywords + indexed))


def json_element(vr: str, value: Any) -> dict:
    """A DICOM JSON attribute (PS3.18 F.2.2) from an indexed value."""
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        groups = str(value).split("=")
        names = {name: group for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if group}
        return {"vr": vr, "Value": [names]} if names else {"vr": vr}
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return {"vr": vr, "Value": [int(value)]}
    if vr == "CS" and "\\" in str(value):
        return {"vr": vr, "Value": str(value).split("\\")}
    return {"vr": vr, "Value": [value]}


# Each QIDO result's identity, selected next to its attributes (imaging.query.run_columns):
# the UIDs for RetrieveURL/BulkDataURIs, the stored syntax, the keys of stored JSON lookups.
_ID_COLUMNS = {"_study": Study.study_instance_uid, "_series": Series.series_instance_uid,
               "_sop": Instance.sop_instance_uid, "_syntax": Instance.transfer_syntax_uid,
               "_study_pk": Study.id, "_series_pk": Series.id}
_IDS_AT_LEVEL = {"STUDY": ("_study", "_study_pk"), "SERIES": ("_study", "_series", "_series_pk"),
                 "IMAGE": ("_study", "_series", "_sop", "_syntax")}


def _id_columns(search: Search) -> dict:
    """The identity columns a search's results need; instances' stored JSON only when asked for."""
    extra = {label: _ID_COLUMNS[label] for label in _IDS_AT_LEVEL[search.level]}
    if search.level == "IMAGE" and (search.include or search.include_all or search.sequences):
        extra["_json"] = Instance.dicom_json
    return extra


def _instance_json(row: dict, base: str) -> dict:
    """An instance result's own stored DICOM JSON, BulkDataURIs made absolute."""
    url = instance_url(base, row["_study"], row["_series"], row["_sop"])
    try:
        return json.loads((row["_json"] or "{}").replace(INSTANCE_PREFIX, url))
    except ValueError:
        return {}


def _first_instance_json(session: Session, level: str, owner_pks: list[int]) -> dict[int, str]:
    """Study or series pk -> DICOM JSON text of its first stored instance (two queries)."""
    if level == "STUDY":
        owner = Series.study_pk
        first = (select(owner.label("pk"), func.min(Instance.id).label("instance_pk")).select_from(Instance)
                 .join(Series, Instance.series_pk == Series.id).where(owner.in_(owner_pks)).group_by(owner))
    else:
        first = (select(Instance.series_pk.label("pk"), func.min(Instance.id).label("instance_pk"))
                 .where(Instance.series_pk.in_(owner_pks)).group_by(Instance.series_pk))
    owners = {r.instance_pk: r.pk for r in session.execute(first)}
    texts = session.execute(select(Instance.id, Instance.dicom_json).where(Instance.id.in_(list(owners))))
    return {owners[instance_pk]: text for instance_pk, text in texts}


def _requested(text: str | None, tags: list[str]) -> dict:
    """The requested attributes of a representative instance, never its bulk data (whose
    URIs point into that one instance)."""
    stored = json.loads(text) if text else {}
    picked = {tag: stored[tag] for tag in tags if tag in stored}
    return {tag: value for tag, value in picked.items() if INSTANCE_PREFIX not in json.dumps(value)}


def stored_attributes(session: Session, search: Search, rows: list[dict], base: str) -> list[dict | None]:
    """Per result, the attributes that come from stored DICOM JSON rather than the index:
    an instance's own (includefield), or a study's/series' from its first instance."""
    if search.level == "IMAGE":
        wanted = search.include or search.include_all
        return [_instance_json(row, base) if wanted else None for row in rows]
    if not search.include or not rows:
        return [None] * len(rows)
    pk = "_study_pk" if search.level == "STUDY" else "_series_pk"
    texts = _first_instance_json(session, search.level, [row[pk] for row in rows])
    return [_requested(texts.get(row[pk]), search.include) for row in rows]


def _retrieve_url(base: str, row: dict, level: str) -> str:
    if level == "IMAGE":
        return instance_url(base, row["_study"], row["_series"], row["_sop"])
    if level == "SERIES":
        return series_url(base, row["_study"], row["_series"])
    return study_url(base, row["_study"])


def _elements(keywords: list[str]) -> list[tuple[str, str, str]]:
    """(keyword, tag, VR) of indexed return attributes, looked up once per search."""
    return [(keyword, f"{tag_for_keyword(keyword):08X}", query.ATTRIBUTES[keyword].vr) for keyword in keywords]


def search_result(row: dict, search: Search, elements: list[tuple[str, str, str]], base: str,
                  stored: dict | None) -> dict:
    """One QIDO-RS result: indexed attributes, requested stored ones, RetrieveURL."""
    out: dict[str, dict] = {}
    if search.include_all and search.level == "IMAGE" and stored:
        out.update(stored)
    for keyword, tag, vr in elements:
        if keyword in row:
            out[tag] = json_element(vr, row[keyword])
    for tag in search.include:
        if tag not in out:
            found = (stored or {}).get(tag)
            out[tag] = found if found is not None else {"vr": _vr(tag)}
    if search.level == "IMAGE":
        out[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [row["_syntax"]]}
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(base, row, search.level)]}
    return dict(sorted(out.items()))


def run_search(session: Session, scope: Scope, search: Search, base: str) -> tuple[list[dict], bool]:
    """(results, truncated): one index query through imaging.query (only the columns the
    answer needs), then the result datasets; truncated when the server's maximum, not the
    client's limit, cut the answer short."""
    keywords = return_keywords(search)
    keys = {keyword: "" for keyword in keywords} | search.match
    wanted = min(search.limit or MAX_RESULTS, MAX_RESULTS)
    if search.sequences:  # matched on each candidate's stored JSON, then paged (as C-FIND matches them)
        candidates = query.run_columns(session, scope, query.Query(search.level, keys, limit=SEQUENCE_CANDIDATES),
                                       _id_columns(search))
        if len(candidates) == SEQUENCE_CANDIDATES:
            search.warnings.append(f"sequence matching looked at the first {SEQUENCE_CANDIDATES} instances only; "
                                   "narrow the search with other keys")
        rows = query.matching_sequences(candidates, search.sequences)[search.offset:search.offset + wanted + 1]
    else:
        rows = query.run_columns(session, scope, query.Query(search.level, keys, limit=wanted + 1,
                                                             offset=search.offset), _id_columns(search))
    truncated = len(rows) > wanted and (search.limit is None or search.limit > MAX_RESULTS)
    rows = rows[:wanted]
    stored = stored_attributes(session, search, rows, base)
    elements = _elements(keywords)
    return [search_result(row, search, elements, base, extra) for row, extra in zip(rows, stored)], truncated


def _warning_header(base: str, warnings: list[str]) -> dict[str, str]:
    if not warnings:
        return {}
    quoted = (w.replace("\\", "\\\\").replace('"', '\\"') for w in dict.fromkeys(warnings))
    text = ", ".join(f'299 {base}: "{w}"' for w in quoted)
    # Header values are Latin-1: a parameter name a client wrote in Chinese must not break it.
    return {"Warning": text.encode("ascii", "replace").decode()}



router = APIRouter()


def qido(request: Request, session: Session, principal: Principal, level: str,
         study: str | None = None, series: str | None = None) -> Response:
    offer = choose(request, JSON_OFFERS)
    search = parse_search(request.query_params, level, fixed=2 if series else 1 if study else 0)
    if study:
        search.match["StudyInstanceUID"] = check_uid(study, "StudyInstanceUID")
    if series:
        search.match["SeriesInstanceUID"] = check_uid(series, "SeriesInstanceUID")
    base = base_url(request)
    results, truncated = run_search(session, access.scope_for(session, principal), search, base)
    if truncated:
        search.warnings.append("there are more results than the server returns at once; "
                               "request the rest with offset")
    audit_request(request, principal, "dicomweb.search", object_type=level.lower(),
                  object_id=json.dumps(search.match, ensure_ascii=False), detail={"matches": len(results)})
    return json_response(results, offer, headers=_warning_header(base, search.warnings))


# QIDO-RS resources (PS3.18 10.6): path, path UIDs, level searched, operation name, description.
SEARCH_RESOURCES = (
    ("/studies", (), "STUDY", "search_studies", "QIDO-RS Search for Studies."),
    ("/series", (), "SERIES", "search_all_series",
     "QIDO-RS Search for Series in all studies (study attributes included)."),
    ("/instances", (), "IMAGE", "search_all_instances", "QIDO-RS Search for Instances in all studies."),
    ("/studies/{study}/series", ("study",), "SERIES", "search_series", "QIDO-RS Search for Series of one study."),
    ("/studies/{study}/instances", ("study",), "IMAGE", "search_study_instances",
     "QIDO-RS Search for Instances of one study."),
    ("/studies/{study}/series/{series}/instances", ("study", "series"), "IMAGE", "search_instances",
     "QIDO-RS Search for Instances of one series."),
)

for path, uids, level, name, doc in SEARCH_RESOURCES:
    add_read_route(router, path, uids, name, doc, functools.partial(qido, level=level))
del path, uids, level, name, doc
