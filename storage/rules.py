"""Who may *do* what, in the one form every domain's policy.py writes it: a table that names each
action's rule and the refusal people read (storage/access.py says who may *see* what).

A service calls `require` before it changes anything; a page asks `allows` to show or hide a
control, which the action checks again."""

from __future__ import annotations

from collections.abc import Callable

from storage.errors import NotPermitted

Rule = Callable[..., bool]


class Rules(dict[str, tuple[Rule, str]]):
    """{action: (rule, refusal)}. A rule takes the domain's subjects (a consult and a user; a
    principal and a referral) and says whether the action may go ahead."""

    def allows(self, action: str, *subjects) -> bool:
        rule, _ = self[action]
        return rule(*subjects)

    def require(self, action: str, *subjects) -> None:
        """Raise NotPermitted (403) with the action's refusal unless its rule holds."""
        rule, refusal = self[action]
        if not rule(*subjects):
            raise NotPermitted(refusal)
