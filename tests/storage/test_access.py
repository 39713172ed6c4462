"""The authorization function: own institution, admin subtree, explicit grants."""

from __future__ import annotations

from datetime import timedelta

from storage import access, service
from storage.access import Principal
from storage.models import AccessGrant
from storage.types import utcnow


def _tree(session):
    city = service.add_institution(session=session, code="CITY", name="市医院", level="city")
    county = service.add_institution(session=session, code="CTY", name="县医院", level="county", parent_code="CITY")
    town = service.add_institution(session=session, code="TWN", name="镇卫生院", level="township", parent_code="CTY")
    other = service.add_institution(session=session, code="OTH", name="另一镇", level="township")
    return city, county, town, other


def _user(inst, role="specialist", user_id=None):
    return Principal(kind="user", name="u", institution_id=inst.id, institution_code=inst.code, role=role,
                     user_id=user_id)


def test_matrix_of_own_subtree_and_grants(runtime):
    with runtime.db.scope() as session:
        city, county, town, other = _tree(session)
        see = lambda p, inst, uid="1.2": access.can_see_study(session, p, institution_id=inst.id, study_uid=uid)
        # Everyone sees their own institution's studies.
        for role in ("radiographer", "specialist", "coordinator", "admin"):
            assert see(_user(town, role), town)
            assert not see(_user(town, role), other)
        # Only admins see their subtree.
        assert see(_user(city, "admin"), town)
        assert not see(_user(city, "specialist"), town)
        assert not see(_user(town, "admin"), city)
        # An AE is scoped like a user of its institution.
        assert see(Principal(kind="ae", name="CT", institution_id=town.id), town)
        assert not see(Principal(kind="ae", name="CT", institution_id=town.id), county)
        # A patient link sees exactly its study.
        patient = Principal(kind="patient", name="link", study_uid="9.9")
        assert see(patient, town, "9.9") and not see(patient, town, "1.2")


def test_grants_are_explicit_expiring_and_revocable(runtime):
    with runtime.db.scope() as session:
        city, county, town, other = _tree(session)
        from storage.identity import add_user

        ids = [add_user(session=session, username=name, role="specialist", institution_code="CTY",
                        password="password-1").id for name in ("reader", "colleague")]
        reader = _user(county, "specialist", user_id=ids[0])
        colleague = _user(county, "specialist", user_id=ids[1])
        see = lambda p: access.can_see_study(session, p, institution_id=town.id, study_uid="5.5")
        assert not see(reader)
        grant = AccessGrant(study_instance_uid="5.5", grantee_user_id=ids[0], source="consult:1")
        session.add(grant)
        session.flush()
        assert see(reader) and not see(colleague)
        grant.expires_at = utcnow() - timedelta(seconds=1)
        session.flush()
        assert not see(reader)
        grant.expires_at = None
        grant.revoked_at = utcnow()
        session.flush()
        assert not see(reader)
        session.add(AccessGrant(study_instance_uid="5.5", grantee_institution_id=county.id))
        session.flush()
        assert see(reader) and see(colleague)


def test_bound_filter_sees_exactly_what_the_literal_filter_sees(runtime):
    """Hot paths build the scope's SQL once per shape and bind values per request: for every
    kind of principal both forms must select the same studies, grants and expiry included."""
    from sqlalchemy import Integer, String, literal, select, union_all

    from storage.identity import add_user

    with runtime.db.scope() as session:
        city, county, town, other = _tree(session)
        reader_id = add_user(session=session, username="reader", role="specialist", institution_code="CTY",
                             password="password-1").id
        past = utcnow() - timedelta(minutes=1)
        session.add_all([
            AccessGrant(study_instance_uid="5.5", grantee_user_id=reader_id),
            AccessGrant(study_instance_uid="6.6", grantee_institution_id=county.id),
            AccessGrant(study_instance_uid="7.7", grantee_user_id=reader_id, expires_at=past),
            AccessGrant(study_instance_uid="8.8", grantee_institution_id=county.id, revoked_at=past),
        ])
        session.flush()
        rows = [(town.id, "1.1"), (county.id, "2.2"), (city.id, "3.3"), (other.id, "4.4"), (other.id, "5.5"),
                (other.id, "6.6"), (other.id, "7.7"), (other.id, "8.8")]
        studies = union_all(*(select(literal(i, Integer).label("institution_id"), literal(u, String).label("uid"))
                              for i, u in rows)).subquery("studies")
        principals = {
            "town radiographer": _user(town, "radiographer"),
            "county reader": _user(county, user_id=reader_id),
            "county colleague": _user(county),
            "city admin": _user(city, "admin"),
            "town AE": Principal(kind="ae", name="CT", institution_id=town.id),
            "patient link": Principal(kind="patient", name="link", study_uid="4.4"),
            "system": access.SYSTEM,
            "no institution": Principal(kind="user", name="x"),
        }
        expected = {
            "town radiographer": {"1.1"}, "county reader": {"2.2", "5.5", "6.6"},
            "county colleague": {"2.2", "6.6"}, "city admin": {"1.1", "2.2", "3.3"}, "town AE": {"1.1"},
            "patient link": {"4.4"}, "system": {f"{n}.{n}" for n in range(1, 9)}, "no institution": set(),
        }
        for name, principal in principals.items():
            scope = access.scope_for(session, principal)
            literal = scope.study_filter(studies.c.institution_id, studies.c.uid)
            bound = access.bound_study_filter(scope.shape, studies.c.institution_id, studies.c.uid)
            query = select(studies.c.uid)
            seen_literal = set(session.scalars(query.where(literal) if literal is not True else query))
            seen_bound = set(session.scalars(query.where(bound) if bound is not True else query,
                                             scope.bound_values()))
            one_by_one = access.bound_study_filter(scope.shape, studies.c.institution_id, studies.c.uid,
                                                   institutions=len(scope.institution_ids))
            seen_one_by_one = set(session.scalars(query.where(one_by_one) if one_by_one is not True else query,
                                                  scope.bound_values(one_by_one=True)))
            assert seen_literal == seen_bound == seen_one_by_one == expected[name], name
