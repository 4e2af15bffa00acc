"""The sandbox registry's rules: what each EPP command does to the state.

One registry serving several TLDs (as a registry back-end does), with per-TLD rules:
periods, auth codes (.si: made by the registry, valid 16 days or until used; .eu: handed
out on request), transfers (immediate with the right code, expiry + 1 year; gTLDs pending
five days unless the losing registrar acts), expiry (.si, .eu go into quarantine; gTLDs
and .at are auto-renewed by the registry, billed to the registrar, unless deleted first;
.at can also be told to delete at expiry) and quarantine / redemption after delete, from
which the sponsor restores a domain with an RFC 3915 restore request (billed) before it
can renew it. A .si registration never activated (no name servers ever set) and deleted
within 16 days is refunded and freed at once.

Every billable event (create, renew, autoRenew, restore, transfer, refund) is written to
the ``charges`` table: the registrar's bill, which tests read to prove what cost us money.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from provisioner.devstack.registry.store import Store
from provisioner.domain.lifecycle import add_period

CLIENT_STATUSES = frozenset({
    "clientDeleteProhibited", "clientHold", "clientRenewProhibited",
    "clientTransferProhibited", "clientUpdateProhibited",
})


@dataclass(frozen=True)
class TldRules:
    periods: tuple[int, ...]
    quarantine_days: int  # after delete or expiry, before the name is free again
    expire_to_quarantine: bool = True  # False: the registry auto-renews on expiry
    transfer_years: int = 1  # expiry extension of a completed transfer
    transfer_pending_days: int = 0  # 0: immediate with the right code
    registry_auth: bool = False  # the registry makes the transfer code (.si)
    auth_valid_days: int | None = None
    auth_on_request: bool = False  # .eu: code only via the authInfo extension
    restorable: bool = True  # a domain in quarantine can be restored by its sponsor
    refund_delete_days: int | None = None  # .si: never-activated, deleted within: refunded
    delete_at_expiry: bool = False  # .at: a deletion can be scheduled at expiry


RULES: dict[str, TldRules] = {
    "si": TldRules(tuple(range(1, 6)), 30, registry_auth=True, auth_valid_days=16,
                   refund_delete_days=16),
    "eu": TldRules(tuple(range(1, 11)), 40, auth_on_request=True, auth_valid_days=40),
    "at": TldRules((1,), 30, expire_to_quarantine=False, restorable=False, delete_at_expiry=True),
    "com": TldRules(tuple(range(1, 11)), 35, expire_to_quarantine=False, transfer_pending_days=5),
    "net": TldRules(tuple(range(1, 11)), 35, expire_to_quarantine=False, transfer_pending_days=5),
    "org": TldRules(tuple(range(1, 11)), 35, expire_to_quarantine=False, transfer_pending_days=5),
}


class EppFailure(Exception):
    """A command that ends with an error result code."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def plus_years(value: datetime, years: int) -> datetime:
    return datetime.combine(add_period(value.date(), 12 * years), value.timetz())


class Registry:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def rules(name: str) -> TldRules:
        tld = name.rsplit(".", 1)[-1]
        if tld not in RULES:
            raise EppFailure(2306, f".{tld} is not served by this registry")
        return RULES[tld]

    def roid(self, kind: str) -> str:
        return f"{kind}{self.store.next('roid')}-SBX"

    def new_auth(self) -> str:
        return secrets.token_urlsafe(12)[:16]

    def message(self, cl_id: str, msg: str, data: dict[str, Any]) -> None:
        self.store.execute("INSERT INTO messages (cl_id, qdate, msg, data) VALUES (?, ?, ?, ?)",
                           cl_id, iso(self.now()), msg,
                           json.dumps(data))

    def charge(self, cl_id: str, name: str, op: str, years: int = 0) -> None:
        self.store.execute("INSERT INTO charges (cl_id, name, op, years, at) VALUES (?, ?, ?, ?, ?)",
                           cl_id, name, op, years, iso(self.now()))

    def domain(self, name: str) -> dict[str, Any]:
        row = self.store.get("domains", "name", name)
        if row is None:
            raise EppFailure(2303, f"domain {name} does not exist")
        return row

    def own_domain(self, name: str, cl_id: str) -> dict[str, Any]:
        row = self.domain(name)
        if row["cl_id"] != cl_id:
            raise EppFailure(2201, f"domain {name} is sponsored by another registrar")
        return row

    def sweep(self) -> None:
        """Apply the clock: expiry, auto-renew, end of quarantine, auto-approved transfers."""
        now = self.now()
        for row in self.store.all("SELECT * FROM domains WHERE state = 'active' AND ex_date < ?",
                                  iso(now)):
            rules = RULES.get(row["tld"])
            if rules is None:
                continue
            if rules.expire_to_quarantine or row.get("delete_at_expiry"):
                row.update(state="quarantine", deleted_at=row["ex_date"],
                           statuses=["pendingDelete", "serverHold"], delete_at_expiry=0)
                self.message(row["cl_id"], f"Domain {row['name']} expired; in quarantine",
                             {"name": row["name"], "event": "expired"})
            else:
                ex = parse(row["ex_date"])
                assert ex is not None
                while ex < now:
                    ex = plus_years(ex, 1)
                    self.charge(row["cl_id"], row["name"], "autoRenew", 1)
                row["ex_date"] = iso(ex)
                self.message(row["cl_id"], f"Domain {row['name']} auto-renewed",
                             {"name": row["name"], "event": "autoRenew", "exDate": iso(ex)})
            self.store.put("domains", row)
        for row in self.store.all("SELECT * FROM domains WHERE state = 'quarantine'"):
            rules = RULES.get(row["tld"])
            deleted = parse(row["deleted_at"])
            if rules and deleted and deleted + timedelta(days=rules.quarantine_days) <= now:
                self.store.delete("domains", "name", row["name"])
                self.store.delete("transfers", "name", row["name"])
        for tr in self.store.all("SELECT * FROM transfers WHERE status = 'pending' AND ac_date <= ?",
                                 iso(now)):
            self._complete_transfer(tr, "serverApproved")

    # -- domains ---------------------------------------------------------------------
    def check_domain(self, name: str) -> tuple[bool, str]:
        tld = name.rsplit(".", 1)[-1]
        if tld not in RULES:
            return False, "TLD not served"
        row = self.store.get("domains", "name", name)
        if row is None:
            return True, ""
        return False, "In quarantine" if row["state"] == "quarantine" else "In use"

    def create_domain(self, cl_id: str, name: str, years: int, registrant: str | None,
                      contacts: dict[str, list[str]], ns: list[str], auth: str) -> dict[str, Any]:
        rules = self.rules(name)
        if years not in rules.periods:
            raise EppFailure(2004, f"period {years}y is not allowed for .{name.rsplit('.', 1)[-1]}")
        if self.store.get("domains", "name", name) is not None:
            raise EppFailure(2302, f"domain {name} is already registered")
        if not registrant:
            raise EppFailure(2003, "registrant is required")
        for handle in [registrant, *[h for hs in contacts.values() for h in hs]]:
            if self.store.get("contacts", "id", handle) is None:
                raise EppFailure(2303, f"contact {handle} does not exist")
        for host in ns:
            if self.store.get("hosts", "name", host) is None:
                raise EppFailure(2303, f"host {host} does not exist")
        if rules.registry_auth:
            if auth:
                raise EppFailure(2306, "authInfo must be empty on create; the registry sets it")
            auth = self.new_auth()
        elif not auth:
            raise EppFailure(2003, "authInfo is required")
        now = self.now()
        row = {
            "name": name, "roid": self.roid("D"), "tld": name.rsplit(".", 1)[-1],
            "registrant": registrant, "contacts": contacts, "ns": sorted(ns),
            "statuses": ["ok"] if ns else ["inactive"], "cl_id": cl_id, "cr_id": cl_id,
            "cr_date": iso(now), "up_date": None, "ex_date": iso(plus_years(now, years)),
            "tr_date": None, "auth_pw": auth, "auth_set_at": iso(now), "state": "active",
            "deleted_at": None, "ns_set_at": iso(now) if ns else None, "delete_at_expiry": 0,
        }
        self.store.put("domains", row)
        self.charge(cl_id, name, "create", years)
        return row

    def info_domain(self, cl_id: str, name: str, auth: str | None,
                    request_auth: bool) -> tuple[dict[str, Any], bool]:
        """(row, full): full data for the sponsor or with the right code."""
        row = self.domain(name)
        if row["cl_id"] == cl_id:
            rules = self.rules(name)
            if request_auth and rules.auth_on_request:
                row["auth_pw"], row["auth_set_at"] = self.new_auth(), iso(self.now())
                self.store.put("domains", row)
            if rules.auth_on_request and not request_auth:
                row = dict(row, auth_pw="")
            return row, True
        if auth is not None:
            if not self._auth_ok(row, auth):
                raise EppFailure(2202, "invalid authorization information")
            return dict(row, auth_pw=""), True
        return dict(row, auth_pw=""), False

    def _auth_ok(self, row: dict[str, Any], auth: str) -> bool:
        if not auth or not row["auth_pw"] or not secrets.compare_digest(auth, row["auth_pw"]):
            return False
        rules = RULES[row["tld"]]
        set_at = parse(row["auth_set_at"])
        if rules.auth_valid_days and set_at is not None:
            return set_at + timedelta(days=rules.auth_valid_days) > self.now()
        return True

    def renew_domain(self, cl_id: str, name: str, cur_exp: str, years: int) -> dict[str, Any]:
        row = self.own_domain(name, cl_id)
        rules = self.rules(name)
        if "clientRenewProhibited" in row["statuses"]:
            raise EppFailure(2304, "clientRenewProhibited")
        if years not in rules.periods:
            raise EppFailure(2004, f"period {years}y is not allowed")
        ex = parse(row["ex_date"])
        assert ex is not None
        if ex.date().isoformat() != cur_exp:
            raise EppFailure(2004, f"curExpDate {cur_exp} is not the expiry {ex.date()}")
        new_ex = plus_years(ex, years)
        if new_ex > plus_years(self.now(), 10):
            raise EppFailure(2004, "a domain cannot be registered more than 10 years ahead")
        if row["state"] == "quarantine":
            raise EppFailure(2304, "the domain is in its redemption period: restore it first "
                                   "(RFC 3915)")
        row["ex_date"] = iso(new_ex)
        row["up_date"] = iso(self.now())
        row["delete_at_expiry"] = 0  # renewed: a scheduled deletion is withdrawn
        self.store.put("domains", row)
        self.charge(cl_id, name, "renew", years)
        return row

    def restore_domain(self, cl_id: str, name: str) -> dict[str, Any]:
        """RFC 3915 restore request: a domain in redemption is active again at once (the
        sandbox needs no restore report, as EURid's reactivation). One whose expiry has
        passed is renewed with it, a year at a time from the old expiry (billed as renewals);
        one deleted before its expiry keeps it."""
        row = self.own_domain(name, cl_id)
        rules = self.rules(name)
        if row["state"] != "quarantine":
            raise EppFailure(2304, "the domain is not in its redemption period")
        if not rules.restorable:
            raise EppFailure(2306, f".{row['tld']} domains cannot be restored")
        now = self.now()
        self.charge(cl_id, name, "restore")
        ex = parse(row["ex_date"])
        assert ex is not None
        while ex < now:
            ex = plus_years(ex, 1)
            self.charge(cl_id, name, "renew", 1)
        row.update(state="active", deleted_at=None, statuses=["ok"] if row["ns"] else ["inactive"],
                   up_date=iso(now), ex_date=iso(ex))
        self.store.put("domains", row)
        return row

    def transfer(self, cl_id: str, op: str, name: str, auth: str | None,
                 years: int | None) -> tuple[dict[str, Any], int]:
        row = self.domain(name)
        rules = self.rules(name)
        tr = self.store.get("transfers", "name", name)
        now = self.now()
        if op == "request":
            if row["cl_id"] == cl_id:
                raise EppFailure(2106, "the domain is already sponsored by you")
            if row["state"] != "active":
                raise EppFailure(2304, "the domain is not active")
            if {"clientTransferProhibited", "serverTransferProhibited"} & set(row["statuses"]):
                raise EppFailure(2304, "transfer prohibited by the domain's status")
            if tr is not None and tr["status"] == "pending":
                raise EppFailure(2300, "a transfer is already pending")
            if auth is None or not self._auth_ok(row, auth):
                raise EppFailure(2202, "invalid authorization information")
            period = years or rules.transfer_years
            tr = {"name": name, "status": "pending", "re_id": cl_id, "re_date": iso(now),
                  "ac_id": row["cl_id"],
                  "ac_date": iso(now + timedelta(days=rules.transfer_pending_days)),
                  "period": period}
            self.store.put("transfers", tr)
            if rules.transfer_pending_days == 0:
                return self._complete_transfer(tr, "serverApproved"), 1000
            row["statuses"] = [*row["statuses"], "pendingTransfer"]
            self.store.put("domains", row)
            self.message(row["cl_id"], f"Transfer of {name} requested",
                         {"name": name, "event": "transferRequested", "reID": cl_id})
            return dict(row, transfer=tr), 1001
        if tr is None:
            raise EppFailure(2301, "no transfer is pending")
        if op == "query":
            if cl_id not in (tr["re_id"], row["cl_id"]):
                raise EppFailure(2201, "not a party to this transfer")
            return dict(row, transfer=tr), 1000
        if tr["status"] != "pending":
            raise EppFailure(2301, "no transfer is pending")
        if op == "cancel":
            if cl_id != tr["re_id"]:
                raise EppFailure(2201, "only the requesting registrar can cancel")
            return self._close_pending(row, tr, "clientCancelled"), 1000
        if cl_id != row["cl_id"]:
            raise EppFailure(2201, "only the sponsoring registrar can approve or reject")
        if op == "approve":
            return self._complete_transfer(tr, "clientApproved"), 1000
        return self._close_pending(row, tr, "clientRejected"), 1000

    def _close_pending(self, row: dict[str, Any], tr: dict[str, Any], status: str) -> dict[str, Any]:
        tr.update(status=status, ac_date=iso(self.now()))
        self.store.put("transfers", tr)
        row["statuses"] = [s for s in row["statuses"] if s != "pendingTransfer"] or ["ok"]
        self.store.put("domains", row)
        self.message(tr["re_id"], f"Transfer of {row['name']}: {status}",
                     {"name": row["name"], "event": "transfer", "trStatus": status})
        return dict(row, transfer=tr)

    def _complete_transfer(self, tr: dict[str, Any], status: str) -> dict[str, Any]:
        row = self.domain(tr["name"])
        loser = row["cl_id"]
        now = self.now()
        ex = parse(row["ex_date"])
        assert ex is not None
        self.charge(tr["re_id"], row["name"], "transfer", int(tr["period"]))
        row.update(
            cl_id=tr["re_id"], tr_date=iso(now), ex_date=iso(plus_years(ex, int(tr["period"]))),
            auth_pw=self.new_auth(), auth_set_at=iso(now),
            statuses=[s for s in row["statuses"] if s != "pendingTransfer"] or ["ok"],
        )
        self.store.put("domains", row)
        tr.update(status=status, ac_date=iso(now))
        self.store.put("transfers", tr)
        self.message(loser, f"Domain {row['name']} transferred away",
                     {"name": row["name"], "event": "transferOut", "trStatus": status,
                      "reID": tr["re_id"]})
        if status != "serverApproved" or RULES[row["tld"]].transfer_pending_days:
            self.message(tr["re_id"], f"Transfer of {row['name']} completed",
                         {"name": row["name"], "event": "transferIn", "trStatus": status})
        return dict(row, transfer=tr)

    def update_domain(self, cl_id: str, name: str, add: dict[str, Any], rem: dict[str, Any],
                      registrant: str | None, auth: str | None) -> None:
        row = self.own_domain(name, cl_id)
        if row["state"] != "active":
            raise EppFailure(2304, "the domain is pending delete")
        statuses = set(row["statuses"])
        if "clientUpdateProhibited" in statuses and "clientUpdateProhibited" not in rem["status"]:
            raise EppFailure(2304, "clientUpdateProhibited")
        for s in add["status"] + rem["status"]:
            if s not in CLIENT_STATUSES:
                raise EppFailure(2306, f"status {s} cannot be set by a registrar")
        for host in add["ns"]:
            if self.store.get("hosts", "name", host) is None:
                raise EppFailure(2303, f"host {host} does not exist")
        for handles in add["contacts"].values():
            for h in handles:
                if self.store.get("contacts", "id", h) is None:
                    raise EppFailure(2303, f"contact {h} does not exist")
        ns = (set(row["ns"]) - set(rem["ns"])) | set(add["ns"])
        if ns and not set(row["ns"]):
            row["ns_set_at"] = iso(self.now())
        contacts: dict[str, list[str]] = {k: list(v) for k, v in row["contacts"].items()}
        for role, handles in rem["contacts"].items():
            contacts[role] = [h for h in contacts.get(role, []) if h not in handles]
        for role, handles in add["contacts"].items():
            contacts[role] = sorted(set(contacts.get(role, [])) | set(handles))
        statuses = (statuses - set(rem["status"]) - {"ok", "inactive"}) | set(add["status"])
        if not ns:
            statuses.add("inactive")
        if not statuses:
            statuses.add("ok")
        row.update(ns=sorted(ns), contacts={k: v for k, v in contacts.items() if v},
                   statuses=sorted(statuses), up_date=iso(self.now()))
        if registrant is not None:
            if self.store.get("contacts", "id", registrant) is None:
                raise EppFailure(2303, f"contact {registrant} does not exist")
            row["registrant"] = registrant
        if auth is not None:
            if RULES[row["tld"]].registry_auth and auth:
                raise EppFailure(2306, "the registry sets the authInfo of this TLD")
            row["auth_pw"] = auth or self.new_auth()
            row["auth_set_at"] = iso(self.now())
        self.store.put("domains", row)

    def delete_domain(self, cl_id: str, name: str, at_expiry: bool = False) -> str:
        """Delete now (into quarantine), or schedule the deletion at expiry (.at). Returns
        what happened: ``quarantine``, ``scheduled`` or ``refunded`` (.si never activated,
        within 16 days: the registration is refunded and the name freed)."""
        row = self.own_domain(name, cl_id)
        rules = self.rules(name)
        if {"clientDeleteProhibited", "serverDeleteProhibited"} & set(row["statuses"]):
            raise EppFailure(2304, "delete prohibited by the domain's status")
        if row["state"] != "active":
            raise EppFailure(2304, "already pending delete")
        for host in self.store.all("SELECT name FROM hosts WHERE name LIKE ?", f"%.{name}"):
            raise EppFailure(2305, f"subordinate host {host['name']} exists")
        now = self.now()
        if at_expiry:
            if not rules.delete_at_expiry:
                raise EppFailure(2306, f".{row['tld']} has no deletion at expiry")
            row.update(delete_at_expiry=1, up_date=iso(now))
            self.store.put("domains", row)
            return "scheduled"
        created = parse(row["cr_date"])
        if (rules.refund_delete_days is not None and row.get("ns_set_at") is None
                and created is not None and now - created <= timedelta(days=rules.refund_delete_days)):
            self.store.delete("domains", "name", name)
            self.charge(cl_id, name, "refund")
            self.message(cl_id, f"Domain {name} deleted; registration refunded",
                         {"name": name, "event": "deletedRefunded"})
            return "refunded"
        row.update(state="quarantine", deleted_at=iso(now), statuses=["pendingDelete"])
        self.store.put("domains", row)
        return "quarantine"

    # -- contacts and hosts ----------------------------------------------------------
    def create_contact(self, cl_id: str, handle: str, data: dict[str, Any], auth: str) -> None:
        if self.store.get("contacts", "id", handle) is not None:
            raise EppFailure(2302, f"contact {handle} exists")
        self.store.put("contacts", {"id": handle, "roid": self.roid("C"), "cl_id": cl_id,
                                    "data": data, "auth_pw": auth, "cr_date": iso(self.now())})

    def contact(self, handle: str) -> dict[str, Any]:
        row = self.store.get("contacts", "id", handle)
        if row is None:
            raise EppFailure(2303, f"contact {handle} does not exist")
        return row

    def update_contact(self, cl_id: str, handle: str, data: dict[str, Any]) -> None:
        row = self.contact(handle)
        if row["cl_id"] != cl_id:
            raise EppFailure(2201, "contact sponsored by another registrar")
        row["data"] = {**row["data"], **data}
        row["up_date"] = iso(self.now())
        self.store.put("contacts", row)

    def create_host(self, cl_id: str, name: str, addrs: list[tuple[str, str]]) -> None:
        if self.store.get("hosts", "name", name) is not None:
            raise EppFailure(2302, f"host {name} exists")
        parent = next((d for d in self._parents(name)), None)
        if parent is not None:
            if parent["cl_id"] != cl_id:
                raise EppFailure(2201, f"the superordinate domain {parent['name']} is not yours")
            if not addrs:
                raise EppFailure(2003, f"host {name} lies in {parent['name']}: glue address needed")
        elif name.rsplit(".", 1)[-1] in RULES:
            raise EppFailure(2303, f"no superordinate domain for {name}")
        elif addrs:
            raise EppFailure(2004, "external hosts take no addresses")
        self.store.put("hosts", {"name": name, "roid": self.roid("H"), "cl_id": cl_id,
                                 "addrs": [list(a) for a in addrs], "cr_date": iso(self.now())})

    def _parents(self, name: str) -> list[dict[str, Any]]:
        labels = name.split(".")
        out = []
        for i in range(1, len(labels) - 1):
            row = self.store.get("domains", "name", ".".join(labels[i:]))
            if row is not None:
                out.append(row)
        return out

    # -- poll ------------------------------------------------------------------------
    def poll(self, cl_id: str) -> tuple[dict[str, Any] | None, int]:
        rows = self.store.all("SELECT * FROM messages WHERE cl_id = ? ORDER BY id", cl_id)
        return (rows[0] if rows else None), len(rows)

    def ack(self, cl_id: str, msg_id: str) -> tuple[int, str]:
        row = self.store.get("messages", "id", msg_id)
        if row is None or row["cl_id"] != cl_id:
            raise EppFailure(2303, f"message {msg_id} does not exist")
        self.store.delete("messages", "id", msg_id)
        rest, count = self.poll(cl_id)
        return count, str(rest["id"]) if rest else msg_id
