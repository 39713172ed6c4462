"""The `lancang` command. Thin: parse arguments, open a unit of work, call a service, print."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from lancang import cli_consult
from lancang.serve import serve
from storage import audit, identity, jobs, service
from storage.access import Principal
from storage.audit import CLI_ACTOR, AuditKeyMismatch
from storage.errors import DomainError
from storage.models import LEVELS, ROLES
from storage.residency import ResidencyError
from storage.runtime import bootstrap
from storage.settings import get_settings

# LAZY_IMPORTS: a command imports its domain or process inside its function. The foundation
# above (storage/) costs 0.6-0.7 s and every command needs it; importing the domains and
# the web app here as well made every admin command (`lancang user add`) take 2.7 s
# (measured 2026-12-04, best of 3: storage 0.69 s, imaging ingest 1.0 s, film 1.6 s,
# consult reports 1.3 s, web.app 2.7 s).


def _runtime():
    return bootstrap(get_settings(), component="cli")


def _audit(session, action: str, object_type: str, object_id: str, **detail) -> None:
    audit.append(session, principal=None, actor=CLI_ACTOR, action=action,
                 object_type=object_type, object_id=object_id, detail=detail)


# --- institutions ----------------------------------------------------------------------


def cmd_institution_add(args) -> None:
    with _runtime().db.scope() as session:
        inst = service.add_institution(session=session, code=args.code, name=args.name, level=args.level,
                                       name_en=args.name_en or "", parent_code=args.parent)
        _audit(session, "admin.institution.add", "institution", inst.code, level=inst.level)
        print(f"institution {inst.code} added ({inst.name_zh}, {inst.level})")


def cmd_institution_set(args) -> None:
    with _runtime().db.scope() as session:
        inst = service.set_institution_details(session=session, code=args.code, department=args.department,
                                               patient_ids_are_resident_ids=args.patient_ids_are_resident_ids,
                                               address=args.address, name_en=args.name_en)
        _audit(session, "admin.institution.set", "institution", inst.code)
        shown = f"{inst.name_zh} · {inst.department or '-'} · {inst.address or '-'}"
    print(f"institution {args.code}: {shown}")


def cmd_institution_list(args) -> None:
    with _runtime().db.scope(readonly=True) as session:
        by_id = {i.id: i for i in service.list_institutions(session=session)}
        for inst in by_id.values():
            parent = by_id[inst.parent_id].code if inst.parent_id else "-"
            state = "" if inst.active else " (disabled)"
            print(f"{inst.code}\t{inst.level}\t{parent}\t{inst.name_zh}\t{inst.name_en}{state}")


def cmd_institution_disable(args) -> None:
    _switch(args, "institution", "institution", args.code,
            lambda session, on: service.set_institution_active(session=session, code=args.code, active=on))


def _switch(args, kind: str, label: str, name: str, change) -> None:
    """Enable or disable one institution, AE or user (`args.enable` says which), audited as
    `admin.<kind>.enable|disable`; said on the terminal once committed."""
    verb = "enable" if args.enable else "disable"
    with _runtime().db.scope() as session:
        change(session, args.enable)
        _audit(session, f"admin.{kind}.{verb}", kind, name)
    print(f"{label} {name} {verb}d")


# --- DICOM nodes -----------------------------------------------------------------------


def cmd_ae_add(args) -> None:
    with _runtime().db.scope() as session:
        node = service.add_node(session=session, ae_title=args.aet, institution_code=args.institution,
                                host=args.host, port=args.port, can=args.can or "store", allow=args.allow)
        _audit(session, "admin.ae.add", "ae", node.ae_title, institution=args.institution,
               permissions=node.permissions, allowed_networks=node.allowed_networks)
        where = f" at {node.host}:{node.port}" if node.host else ""
        print(f"AE {node.ae_title} registered for {args.institution}{where}: may {node.permissions}; "
              f"from {node.allowed_networks or 'any address'}")
        _warn_unbound(node)


def cmd_ae_set(args) -> None:
    with _runtime().db.scope() as session:
        node = service.set_node_access(session=session, ae_title=args.aet, can=args.can, allow=args.allow,
                                       allow_any=args.allow_any)
        _audit(session, "admin.ae.set", "ae", node.ae_title, permissions=node.permissions,
               allowed_networks=node.allowed_networks)
        print(f"AE {node.ae_title}: may {node.permissions}; from {node.allowed_networks or 'any address'}")
        _warn_unbound(node)


def _warn_unbound(node) -> None:
    if node.can & {"query", "retrieve"} and not node.networks:
        print(f"warning: {node.ae_title} may query/retrieve from any address; bind it with --allow CIDR "
              "(required when LANCANG_DICOM_REQUIRE_HOST_BINDING=1)", file=sys.stderr)


def cmd_ae_list(args) -> None:
    with _runtime().db.scope(readonly=True) as session:
        print("AE\tinstitution\tmove target\tmay\tfrom\tstate")
        for node in service.list_nodes(session=session):
            where = f"{node.host}:{node.port}" if node.host else "-"
            print(f"{node.ae_title}\t{node.institution.code}\t{where}\t{node.permissions}\t"
                  f"{node.allowed_networks or 'any'}\t{'enabled' if node.enabled else 'disabled'}")


def cmd_ae_disable(args) -> None:
    _switch(args, "ae", "AE", args.aet,
            lambda session, on: service.set_node_enabled(session=session, ae_title=args.aet, enabled=on))


# --- users and tokens ------------------------------------------------------------------


def cmd_user_add(args) -> None:
    with _runtime().db.scope() as session:
        user = identity.add_user(session=session, username=args.username, role=args.role,
                                institution_code=args.institution, password=args.password,
                                display_name=args.display_name or "", title=args.title or "",
                                must_change_password=args.must_change_password)
        _audit(session, "admin.user.add", "user", user.username, role=user.role, institution=args.institution)
        print(f"user {user.username} added ({user.role} at {args.institution})")


def cmd_user_list(args) -> None:
    with _runtime().db.scope(readonly=True) as session:
        for user in identity.list_users(session=session):
            state = "active" if user.active else "disabled"
            print(f"{user.username}\t{user.role}\t{user.institution.code}\t{user.display_name}\t{state}")


def cmd_user_disable(args) -> None:
    _switch(args, "user", "user", args.username,
            lambda session, on: identity.set_user_active(session=session, username=args.username, active=on))


def cmd_user_contact(args) -> None:
    with _runtime().db.scope() as session:
        user = identity.set_contact(session=session, user=identity.get_user(session=session, username=args.username),
                                    email=args.email, mobile=args.mobile)
        _audit(session, "admin.user.contact", "user", user.username, email=bool(user.email), mobile=bool(user.mobile))
        email, mobile = user.email or "-", user.mobile or "-"
    print(f"user {args.username}: e-mail {email}, mobile {mobile}")


def cmd_user_passwd(args) -> None:
    """An admin resets a user's password (they forgot it); every session and token of the
    user ends, and the reset is audited."""
    with _runtime().db.scope() as session:
        user = identity.get_user(session=session, username=args.username)
        _, ended = identity.reset_password(session=session, user=user, temporary=args.password)
        _audit(session, "admin.user.passwd", "user", user.username, sessions_ended=ended)
        print(f"password of {user.username} reset; {ended} session(s)/token(s) ended")


def cmd_token_issue(args) -> None:
    with _runtime().db.scope() as session:
        user = identity.get_user(session=session, username=args.username)
        secret, row = identity.issue_token(session=session, user=user, days=args.days, label=args.label or "cli")
        _audit(session, "admin.token.issue", "token", str(row.id), user=user.username)
        print(f"token {row.id} for {user.username}, expires {row.expires_at.isoformat(timespec='seconds')}")
    print(secret)


def cmd_token_list(args) -> None:
    with _runtime().db.scope(readonly=True) as session:
        for row in identity.list_tokens(session=session, username=args.username):
            state = "revoked" if row.revoked_at else ("expired" if row.expires_at < datetime.now(timezone.utc) else "valid")
            print(f"{row.id}\t{row.user.username}\t{row.label}\t{row.expires_at.isoformat(timespec='seconds')}\t{state}")


def cmd_token_revoke(args) -> None:
    with _runtime().db.scope() as session:
        if args.token.isdigit():
            row = identity.revoke_token(session=session, token_id=int(args.token))
        else:
            row = identity.revoke_token(session=session, secret=args.token)
        _audit(session, "admin.token.revoke", "token", str(row.id))
        print(f"token {row.id} revoked")


# --- import ----------------------------------------------------------------------------


def cmd_import(args) -> int:
    # lazy: the imaging import path (pydicom, pylibjpeg, the index) costs ~0.4 s more than
    # the admin commands need; see LAZY_IMPORTS below.
    from imaging import persons
    from imaging.announce import TASK
    from imaging.importer import run_import
    from imaging.limits import Limits
    from imaging.service import Ingestor
    runtime = _runtime()
    with runtime.db.scope(readonly=True) as session:
        institution = service.get_institution(session=session, code=args.institution)
        institution_id = institution.id
    ingestor = Ingestor(runtime.db, runtime.store, limits=Limits.of(runtime.settings),
                        identity=persons.IdentityRules.of(runtime.settings))
    try:
        with tqdm(unit="file", desc="import", disable=args.quiet, file=sys.stderr) as bar:
            summary = run_import(ingestor, [Path(p) for p in args.paths], institution_id=institution_id,
                                 progress=bar)
    finally:
        ingestor.close()
    for series_pk in sorted(summary.series_pks):
        jobs.send_now(TASK, (series_pk,), "derive")
    audit.record(runtime.db, principal=None, actor=CLI_ACTOR, action="dicom.import", object_type="study",
                 object_id=",".join(sorted(summary.studies))[:4000], outcome="ok" if summary.ok else "failed",
                 detail={**dict(summary.outcomes), "institution": args.institution,
                         "paths": [str(p) for p in args.paths][:20]})
    for line in summary.lines():
        print(line)
    return 0 if summary.ok else 1


# --- audit -----------------------------------------------------------------------------


def cmd_audit_verify(args) -> int:
    runtime = _runtime()
    result = audit.verify_and_checkpoint(runtime.db, runtime.store)
    if result.ok:
        print(f"audit chain intact: {result.checked} records, head {result.head_hash} (checkpoint moved there)")
        return 0
    print(f"audit chain BROKEN at record {result.first_bad_seq}: {result.reason} "
          f"({result.checked} records checked)", file=sys.stderr)
    return 1


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise DomainError(f"--since must be a date like 2026-11-01, not {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def cmd_audit_export(args) -> None:
    since = _parse_date(args.since) if args.since else None
    with _runtime().db.scope(readonly=True) as session:
        text = audit.export(audit.iter_since(session, since), args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


# --- cloud film ------------------------------------------------------------------------


def cmd_share_create(args) -> None:
    from film import service as shares  # lazy: see LAZY_IMPORTS
    runtime = _runtime()
    settings = runtime.settings
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=Principal(kind="system", name=CLI_ACTOR),
                                      study_uid=args.study_uid,
                                      secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url, days=args.days, source="cli")
        result = created.as_json()
    print(json.dumps(result, ensure_ascii=False))


def cmd_share_revoke(args) -> None:
    from film import service as shares  # lazy: see LAZY_IMPORTS
    text = args.share.strip()
    token = None if text.isdigit() else shares.token_from(text)
    if not text.isdigit() and token is None:
        raise DomainError(f"not a share id or a cloud-film link: {text!r}")
    with _runtime().db.scope() as session:
        share = shares.revoke_share(session=session, principal=Principal(kind="system", name=CLI_ACTOR),
                                    source="cli",
                                    share_id=int(text) if text.isdigit() else None, token=token)
        print(f"share {share.id} revoked (study {share.study_instance_uid})")


# --- database and processes ------------------------------------------------------------


def cmd_db_upgrade(args) -> None:
    runtime = _runtime()
    print(f"database at head: {runtime.db.engine.url.render_as_string(hide_password=True)}")


def cmd_serve(args) -> int:
    return serve(get_settings())


def cmd_web(args) -> None:
    import uvicorn

    from web.app import create_app  # lazy: see LAZY_IMPORTS

    settings = get_settings()
    proxies = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
    # uvicorn's default believes X-Forwarded-For from 127.0.0.1, i.e. from anyone who can
    # reach the port through a local forwarder: only configured proxies are believed.
    uvicorn.run(create_app(settings), host=settings.bind_host, port=settings.http_port,
                log_level=settings.log_level.lower(), proxy_headers=bool(proxies),
                forwarded_allow_ips=proxies or None)


def cmd_dicom(args) -> None:
    from imaging.multiproc import run_receiver  # lazy: see LAZY_IMPORTS

    run_receiver(get_settings())


def cmd_worker(args) -> None:
    from workers.main import run_worker  # lazy: see LAZY_IMPORTS

    run_worker(get_settings(), concurrency=args.concurrency, queues=args.queues)


# --- the township edge -----------------------------------------------------------------


def cmd_edge_init(args) -> None:
    """Create the edge's data dir and database, its township, a desk user and the modalities'
    AEs; what already exists is kept (the command can be run again, e.g. to add a modality)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    password = args.desk_password or secrets.token_urlsafe(9)
    with _runtime().db.scope() as session:
        said = [_edge_institution(session, args), _edge_user(session, args, password)]
        said += [_edge_modality(session, args, aet) for aet in args.modality]
    for line in said:
        print(line)
    host = settings.bind_host
    print(f"edge ready in {settings.data_dir.resolve()} "
          f"({'embedded: SQLite and files' if settings.embedded else 'servers'})")
    print(f"  modalities store to AE {settings.dicom_ae_title} at {host}:{settings.dicom_port} and pull the "
          f"worklist from AE {settings.edge_mwl_ae} at {host}:{settings.edge_mwl_port}")
    print(f"  registration desk: {settings.effective_public_url}/desk")
    print(f"  region: {settings.edge_region_url or '(none: LANCANG_EDGE_REGION_URL unset, studies stay here)'}")
    print("  start everything with: lancang edge run")


def _edge_institution(session, args) -> str:
    try:
        inst = service.get_institution(session=session, code=args.institution)
        said = f"institution {inst.code} already there ({inst.name_zh})"
    except DomainError:
        inst = service.add_institution(session=session, code=args.institution, name=args.name, level="township",
                                       name_en=args.name_en or "")
        _audit(session, "admin.institution.add", "institution", inst.code, level=inst.level, by="edge init")
        said = f"institution {inst.code} added ({inst.name_zh}, township)"
    if args.patient_ids_are_resident_ids and not inst.patient_ids_are_resident_ids:
        service.set_institution_details(session=session, code=inst.code, patient_ids_are_resident_ids=True)
        _audit(session, "admin.institution.set", "institution", inst.code, patient_ids_are_resident_ids=True)
        said += "; its PatientIDs are 居民身份证号"
    return said


def _edge_user(session, args, password: str) -> str:
    try:
        user = identity.get_user(session=session, username=args.desk_user)
        return f"user {user.username} already there ({user.role} at {user.institution.code})"
    except DomainError:
        pass
    # A password chosen here is printed once and must be changed at the first sign-in.
    user = identity.add_user(session=session, username=args.desk_user, role="radiographer",
                             institution_code=args.institution, password=password,
                             display_name=args.desk_name or "登记台", must_change_password=not args.desk_password)
    _audit(session, "admin.user.add", "user", user.username, role=user.role, institution=args.institution,
           by="edge init")
    shown = "as given" if args.desk_password else f"{password} (to be changed at first sign-in)"
    return f"user {user.username} added (radiographer at {args.institution}), password {shown}"


def _edge_modality(session, args, aet: str) -> str:
    try:
        node = service.get_node(session=session, ae_title=aet)
        return f"AE {node.ae_title} already registered (for {node.institution.code}: may {node.permissions})"
    except DomainError:
        pass
    # A modality stores its images here and pulls the worklist: store and query, nothing more.
    node = service.add_node(session=session, ae_title=aet, institution_code=args.institution, can="store,query",
                            allow=args.allow)
    _audit(session, "admin.ae.add", "ae", node.ae_title, institution=args.institution, permissions=node.permissions,
           allowed_networks=node.allowed_networks, by="edge init")
    _warn_unbound(node)
    return f"AE {node.ae_title} registered for {args.institution}: may {node.permissions}; " \
           f"from {node.allowed_networks or 'any address'}"


def cmd_edge_run(args) -> int:
    return serve(get_settings(), edge=True)


def cmd_edge_mwl(args) -> None:
    from edge.mwl import run_forever  # lazy: see LAZY_IMPORTS

    run_forever(get_settings())


def cmd_edge_forward(args) -> int:
    try:
        from edge.forward import run_forever  # lazy: see LAZY_IMPORTS
    except ImportError as exc:
        print(f"error: the forwarder is not installed ({exc})", file=sys.stderr)
        return 2
    run_forever(get_settings())
    return 0


def cmd_edge_credential(args) -> None:
    """At the region: a credential for a township's edge, printed once (only its hash is kept)."""
    from edge import region  # lazy: see LAZY_IMPORTS
    secret = region.cli_issue(_runtime().db, institution_code=args.institution, name=args.name)
    print(f"edge {args.name} of {args.institution}: LANCANG_EDGE_CREDENTIAL={secret}")
    print("  shown once: put it in the edge's environment; a new one replaces it, 'lancang edge revoke' ends it")


def cmd_edge_import_worklist(args) -> int:
    """Register a CSV list of patients on the institution's worklist, every row or none."""
    from edge import worklist_import  # lazy: see LAZY_IMPORTS

    path = Path(args.file)
    try:
        with path.open("rb") as handle:
            data = handle.read(worklist_import.MAX_BYTES + 1)
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        imported = worklist_import.cli_import(_runtime().db, institution_code=args.institution, data=data,
                                              filename=path.name)
    except (worklist_import.ListRefused, worklist_import.ListTooLarge) as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print(f"nothing imported ({len(exc.problems)} problem(s)) / 未导入任何人", file=sys.stderr)
        return 2
    print(f"imported {imported.count} / 已导入 {imported.count} 人 (from {imported.first_day}; "
          f"accessions {imported.accessions[0]}..{imported.accessions[-1]})")
    if imported.ignored:
        print(f"columns not read / 未使用的列: {', '.join(imported.ignored)}", file=sys.stderr)
    return 0


def cmd_edge_revoke(args) -> None:
    from edge import region  # lazy: see LAZY_IMPORTS
    region.cli_revoke(_runtime().db, name=args.name)
    print(f"edge {args.name}: credential revoked (what it sent stays)")


# --- parser ----------------------------------------------------------------------------


def _sub(parent, name, help_text, fn, *arguments):
    parser = parent.add_parser(name, help=help_text)
    for names, options in arguments:
        parser.add_argument(*names, **options)
    parser.set_defaults(fn=fn)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lancang", description="Lancang regional imaging cloud")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_processes_and_data(commands)
    _add_registry(commands)
    _add_people(commands)
    _add_records(commands)
    _add_edge(commands)
    cli_consult.register(commands, _sub)
    return parser


def _add_processes_and_data(commands) -> None:
    """serve, web, dicom, worker; import; db"""
    _sub(commands, "serve", "run web, DICOM receiver and worker together", cmd_serve)
    _sub(commands, "web", "run only the web application", cmd_web)
    _sub(commands, "dicom", "run only the DICOM receiver", cmd_dicom)
    _sub(commands, "worker", "run only a Celery worker", cmd_worker,
         (("--concurrency",), {"type": int, "default": 2}),
         (("--queues",), {"default": "derive,render,notify,maintenance"}))

    _sub(commands, "import", "import DICOM files, folders and zip archives", cmd_import,
         (("paths",), {"nargs": "+", "metavar": "PATH"}), (("--institution",), {"required": True}),
         (("--quiet", "-q"), {"action": "store_true", "help": "no progress bar"}))

    db = commands.add_parser("db", help="database").add_subparsers(dest="sub", required=True)
    _sub(db, "upgrade", "migrate the database to the newest schema", cmd_db_upgrade)


def _add_registry(commands) -> None:
    """institutions and DICOM application entities"""
    inst = commands.add_parser("institution", help="institutions").add_subparsers(dest="sub", required=True)
    _sub(inst, "add", "add an institution", cmd_institution_add,
         (("code",), {}), (("--name",), {"required": True}), (("--name-en",), {}),
         (("--level",), {"required": True, "choices": LEVELS}), (("--parent",), {}))
    _sub(inst, "set", "what reports print under the name", cmd_institution_set, (("code",), {}),
         (("--department",), {"help": "the reading department, e.g. 医学影像科"}),
         (("--address",), {"help": "postal address printed in the report header"}), (("--name-en",), {}),
         (("--patient-ids-are-resident-ids",), {"action": argparse.BooleanOptionalAction, "default": None,
                                                "help": "its PatientIDs are 居民身份证号: valid ones join persons"}))
    _sub(inst, "list", "list institutions", cmd_institution_list)
    _sub(inst, "disable", "disable an institution", cmd_institution_disable, (("code",), {})).set_defaults(enable=False)
    _sub(inst, "enable", "re-enable an institution", cmd_institution_disable, (("code",), {})).set_defaults(enable=True)

    ae = commands.add_parser("ae", help="DICOM application entities").add_subparsers(dest="sub", required=True)
    _sub(ae, "add", "register a calling AE", cmd_ae_add,
         (("aet",), {}), (("--institution",), {"required": True}), (("--host",), {}),
         (("--port",), {"type": int}),
         (("--can",), {"help": "comma list of store, query, retrieve (default: store only)"}),
         (("--allow",), {"action": "append", "default": [], "metavar": "CIDR",
                         "help": "accept associations only from this address/network (repeatable)"}))
    _sub(ae, "set", "change what an AE may do and where from", cmd_ae_set, (("aet",), {}),
         (("--can",), {"help": "comma list of store, query, retrieve"}),
         (("--allow",), {"action": "append", "default": [], "metavar": "CIDR"}),
         (("--allow-any",), {"action": "store_true", "help": "remove the address binding"}))
    _sub(ae, "list", "list AEs", cmd_ae_list)
    _sub(ae, "disable", "disable an AE", cmd_ae_disable, (("aet",), {})).set_defaults(enable=False)
    _sub(ae, "enable", "re-enable an AE", cmd_ae_disable, (("aet",), {})).set_defaults(enable=True)


def _add_people(commands) -> None:
    """users and their API tokens"""
    user = commands.add_parser("user", help="users").add_subparsers(dest="sub", required=True)
    _sub(user, "add", "add a user", cmd_user_add,
         (("username",), {}), (("--role",), {"required": True, "choices": ROLES}),
         (("--institution",), {"required": True}), (("--password",), {"required": True}),
         (("--display-name",), {}),
         (("--title",), {"help": "professional title printed on signed reports, e.g. 主任医师"}),
         (("--must-change-password",), {"action": "store_true",
                                        "help": "ask the user to choose their own password at first sign-in"}))
    _sub(user, "list", "list users", cmd_user_list)
    _sub(user, "passwd", "reset a user's password (ends their sessions)", cmd_user_passwd,
         (("username",), {}), (("--password",), {"required": True}))
    _sub(user, "contact", "where notifications reach a user outside Lancang (\"\" clears)", cmd_user_contact,
         (("username",), {}), (("--email",), {"help": "e-mail address (LANCANG_NOTIFY_SMTP_HOST)"}),
         (("--mobile",), {"help": "mobile number the 企业微信 robot mentions (LANCANG_NOTIFY_WECOM_WEBHOOK)"}))
    _sub(user, "disable", "disable a user", cmd_user_disable, (("username",), {})).set_defaults(enable=False)
    _sub(user, "enable", "re-enable a user", cmd_user_disable, (("username",), {})).set_defaults(enable=True)

    token = commands.add_parser("token", help="API tokens").add_subparsers(dest="sub", required=True)
    _sub(token, "issue", "issue a bearer token (printed as the last line)", cmd_token_issue,
         (("username",), {}), (("--days",), {"type": float, "default": get_settings().token_days}),
         (("--label",), {}))
    _sub(token, "list", "list tokens", cmd_token_list, (("username",), {"nargs": "?"}))
    _sub(token, "revoke", "revoke a token by id or secret", cmd_token_revoke, (("token",), {}))


def _add_records(commands) -> None:
    """the audit trail and cloud-film links"""
    aud = commands.add_parser("audit", help="audit trail").add_subparsers(dest="sub", required=True)
    _sub(aud, "verify", "check the hash chain", cmd_audit_verify)
    _sub(aud, "export", "export records", cmd_audit_export,
         (("--since",), {}), (("--format",), {"choices": ("csv", "json"), "default": "csv"}),
         (("--output", "-o"), {}))

    share = commands.add_parser("share", help="cloud-film links for patients").add_subparsers(dest="sub", required=True)
    _sub(share, "create", "create a link and PIN for a study (prints JSON: url, pin, expires_at, id)",
         cmd_share_create, (("study_uid",), {"metavar": "STUDY_UID"}),
         (("--days",), {"type": float, "default": 30, "help": "days until the link expires (default 30)"}))
    _sub(share, "revoke", "revoke a link by its URL or id", cmd_share_revoke,
         (("share",), {"metavar": "URL_OR_ID"}))


def _add_edge(commands) -> None:
    """the township edge (基层云PACS): set up, run, and the edge's own two processes"""
    edge = commands.add_parser("edge", help="the township edge").add_subparsers(dest="sub", required=True)
    _sub(edge, "init", "create the data dir, the township, a desk user and the modalities' AEs", cmd_edge_init,
         (("--institution",), {"required": True, "metavar": "CODE", "help": "the township's code, as at the region"}),
         (("--name",), {"required": True, "help": "the township's name, e.g. 勐朗镇卫生院"}), (("--name-en",), {}),
         (("--desk-user",), {"default": "desk", "help": "the registration desk's user (default: desk)"}),
         (("--desk-name",), {"help": "the name shown for the desk user (default: 登记台)"}),
         (("--desk-password",), {"help": "default: generated, printed once, changed at first sign-in"}),
         (("--modality",), {"action": "append", "default": [], "metavar": "AET",
                            "help": "a modality's AE title: it may store images and pull the worklist (repeatable)"}),
         (("--allow",), {"action": "append", "default": [], "metavar": "CIDR",
                         "help": "the modalities' network, e.g. 192.168.1.0/24 (repeatable)"}),
         (("--patient-ids-are-resident-ids",), {"action": "store_true",
                                                "help": "the township's PatientIDs are 居民身份证号"}))
    for name, help_text, fn in (("run", "run web, DICOM receiver, worker, worklist and forwarder", cmd_edge_run),
                                ("mwl", "run only the modality worklist (C-FIND MWL SCP)", cmd_edge_mwl),
                                ("forward", "run only the forwarder to the region", cmd_edge_forward)):
        _sub(edge, name, help_text, fn).set_defaults(service=True)
    _sub(edge, "import-worklist", "register a CSV list of patients at once (all rows or none)",
         cmd_edge_import_worklist, (("file",), {"metavar": "FILE.csv"}),
         (("--institution",), {"required": True, "metavar": "CODE", "help": "the township whose worklist it is"}))
    _sub(edge, "credential", "(at the region) issue a township edge's credential, printed once", cmd_edge_credential,
         (("--institution",), {"required": True, "metavar": "CODE", "help": "the township the edge sends for"}),
         (("--name",), {"required": True, "help": "the edge's name, e.g. t01-edge"}))
    _sub(edge, "revoke", "(at the region) end an edge's credential at once", cmd_edge_revoke,
         (("name",), {"metavar": "NAME"}))


SERVICES = ("serve", "web", "dicom", "worker")


def _configure_logging(command: str, service: bool = False) -> None:
    # Services log to stdout at the configured level; admin commands keep stdout for their
    # output (tokens, exports) and only report warnings, on stderr.
    service = service or command in SERVICES
    logging.basicConfig(level=get_settings().log_level.upper() if service else logging.WARNING,
                        stream=sys.stdout if service else sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The filesystem broker has no host; kombu says so at every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    try:
        get_settings()
    except ValidationError as exc:
        print(f"error: configuration: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    _configure_logging(args.command, getattr(args, "service", False))
    try:
        return args.fn(args) or 0
    except DomainError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, (ResidencyError, AuditKeyMismatch)):
            print(f"error: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
