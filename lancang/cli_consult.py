"""`lancang ca ...` and `lancang report ...`: the signing authority and report verification."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from storage import audit
from storage.audit import CLI_ACTOR
from storage.identity import get_user
from storage.runtime import bootstrap
from storage.settings import get_settings


def _runtime():
    return bootstrap(get_settings(), component="cli")


def cmd_ca_init(args) -> None:
    from consult import reports  # lazy: see lancang/cli.py LAZY_IMPORTS

    with _runtime().db.scope() as session:
        authority = reports.init_authority(session=session, name=args.name, organisation=args.organisation,
                                           password=args.password)
        audit.append(session, principal=None, actor=CLI_ACTOR, action="admin.ca.init",
                     object_type="ca", object_id=str(authority.id), detail={"name": args.name})
        print(f"signing authority {authority.id} created: {args.name}")
    if args.cert_out:
        Path(args.cert_out).write_bytes(authority.cert_pem)
        print(f"CA certificate written to {args.cert_out}")


def cmd_ca_issue(args) -> None:
    from consult import reports  # lazy: see lancang/cli.py LAZY_IMPORTS

    with _runtime().db.scope() as session:
        user = get_user(session=session, username=args.username)
        credential = reports.issue_credential(session=session, user=user, ca_password=args.ca_password,
                                              signing_password=args.password)
        audit.append(session, principal=None, actor=CLI_ACTOR, action="admin.ca.issue",
                     object_type="user", object_id=user.username, detail={"credential": credential.id})
        print(f"signing certificate issued to {user.username} ({user.display_name})")


def cmd_report_verify(args) -> int:
    from consult import reports  # lazy: see lancang/cli.py LAZY_IMPORTS

    try:
        pdf = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    with _runtime().db.scope(readonly=True) as session:
        verdict = reports.verify_upload(session=session, pdf=pdf)
    if args.json:
        print(json.dumps(verdict, ensure_ascii=False, indent=1))
    if verdict["ok"]:
        for signer in verdict["signers"]:
            print(f"signed by {signer['name']} ({signer['institution']}) at {signer['signed_at']}")
        print("report intact: every signature verifies / 报告完整，签名有效")
        return 0
    print("REPORT NOT VALID / 报告无效: " + "; ".join(verdict["problems"] or ["a signature does not verify"]),
          file=sys.stderr)
    return 1


def register(commands, sub) -> None:
    """Add the ca and report command groups to the main parser."""
    ca = commands.add_parser("ca", help="signing authority for reports").add_subparsers(dest="sub", required=True)
    sub(ca, "init", "create the institutional CA (where no national CA is configured)", cmd_ca_init,
        (("--name",), {"required": True}), (("--organisation",), {"required": True}),
        (("--password",), {"required": True, "help": "encrypts the CA key (12+ characters)"}),
        (("--cert-out",), {"help": "also write the CA certificate (PEM) here"}))
    sub(ca, "issue", "issue a specialist's signing certificate", cmd_ca_issue,
        (("username",), {}), (("--ca-password",), {"required": True}),
        (("--password",), {"required": True, "help": "the specialist's signing password"}))
    report = commands.add_parser("report", help="diagnostic reports").add_subparsers(dest="sub", required=True)
    sub(report, "verify", "check a signed report PDF: exit 0 and the signers if intact", cmd_report_verify,
        (("file",), {}), (("--json",), {"action": "store_true"}))
