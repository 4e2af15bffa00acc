"""Certificates from an ACME CA (RFC 8555) with the `acme` library.

All acme/josepy/requests use lives here; callers see our errors only:

* a refused challenge (wrong TXT record, site down, wrong content) -> `ChallengeRefused`
  (an InvalidInput: not retried) naming each name, its challenge type and the CA's reason;
* rate limits (``urn:ietf:params:acme:error:rateLimited``), ``badNonce`` that outlived
  the retries, server errors, timeouts and an unreachable CA -> `TransientError`;
* a CA that wants External Account Binding we do not have, a refused account ->
  `ConfigurationError`; a name the CA will not issue for -> `InvalidInput`.

The library's `poll_and_finalize` sleeps a whole second between polls; we poll with a
short, growing interval instead (bounded by the deadline and any Retry-After).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import josepy as jose
import requests
from acme import challenges, crypto_util, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioner.adapters.tls_targets import CertificateTarget, certificate_info, check_key_matches
from provisioner.errors import ConfigurationError, InvalidInput, TransientError

log = logging.getLogger("provisioner.acme")

T = TypeVar("T")
_ACME = "urn:ietf:params:acme:error:"
_TRANSIENT_CODES = frozenset({"rateLimited", "badNonce", "serverInternal", "orderNotReady"})
_CONFIG_CODES = frozenset({"externalAccountRequired", "accountDoesNotExist", "unauthorized",
                           "userActionRequired", "badPublicKey", "badSignatureAlgorithm"})


class ChallengeRefused(InvalidInput):
    """The CA validated a challenge and refused it. `failures` holds (name, type, reason)."""

    def __init__(self, failures: Sequence[tuple[str, str, str]]) -> None:
        text = "; ".join(f"{name} ({kind}): {reason}" for name, kind, reason in failures)
        super().__init__(f"the CA refused the challenge for {text}")
        self.failures = list(failures)


@dataclass(frozen=True)
class IssuedCertificate:
    names: tuple[str, ...]
    key_pem: bytes
    chain_pem: bytes
    not_after: _dt.datetime
    serial: int
    challenges: dict[str, str] = field(default_factory=dict)  # name -> http-01 | dns-01


class ChallengeSolver(Protocol):
    kind: str  # "http-01" | "dns-01"

    def publish(self, name: str, challb: messages.ChallengeBody, account_key: jose.JWK) -> Callable[[], None]:
        """Make the CA's check pass; returns the cleanup."""
        ...


class Http01Solver:
    kind = "http-01"

    def __init__(self, target: CertificateTarget) -> None:
        self.target = target

    def publish(self, name: str, challb: messages.ChallengeBody, account_key: jose.JWK) -> Callable[[], None]:
        chall = challb.chall
        assert isinstance(chall, challenges.HTTP01)
        token = chall.encode("token")
        self.target.publish_challenge(token, chall.validation(account_key))
        return lambda: self.target.remove_challenge(token)


class TxtPublisher(Protocol):
    def set_txt(self, name: str, value: str, ttl: int = ..., zone: str | None = ...) -> str: ...

    def delete_txt(self, name: str, value: str, zone: str | None = ...) -> None: ...


class Dns01Solver:
    kind = "dns-01"

    def __init__(self, dns: TxtPublisher) -> None:
        self.dns = dns

    def publish(self, name: str, challb: messages.ChallengeBody, account_key: jose.JWK) -> Callable[[], None]:
        chall = challb.chall
        assert isinstance(chall, challenges.DNS01)
        record = chall.validation_domain_name(name.removeprefix("*."))
        value = chall.validation(account_key)
        zone = self.dns.set_txt(record, value)
        return lambda: self.dns.delete_txt(record, value, zone=zone)


_CHALLENGE_TYPES: dict[str, type[challenges.Challenge]] = {
    "http-01": challenges.HTTP01, "dns-01": challenges.DNS01}


def generate_key_pem(kind: str = "ec256") -> bytes:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ec384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind.startswith("rsa"):
        key = rsa.generate_private_key(65537, int(kind[3:] or 2048))
    else:
        raise ConfigurationError(f"unknown key type {kind!r}")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _problem(exc: messages.Error) -> str:
    code = exc.code or (exc.typ or "").rsplit(":", 1)[-1]
    return f"{code}: {exc.detail or exc.title or ''}".strip()


def translate(exc: BaseException, what: str) -> Exception:
    """One of our errors for a library exception."""
    if isinstance(exc, messages.Error):
        code = exc.code or ""
        if code in _TRANSIENT_CODES:
            return TransientError(f"ACME {what}: {_problem(exc)}")
        if code in _CONFIG_CODES:
            return ConfigurationError(f"ACME {what}: {_problem(exc)}")
        return InvalidInput(f"ACME {what}: {_problem(exc)}")
    if isinstance(exc, errors.TimeoutError):
        return TransientError(f"ACME {what}: the CA did not finish before the deadline")
    if isinstance(exc, errors.IssuanceError):
        return InvalidInput(f"ACME {what}: the CA refused to issue: {exc.error}")
    if isinstance(exc, requests.exceptions.RequestException | errors.ClientError | OSError):
        return TransientError(f"ACME {what}: the CA is unreachable or answered badly: {exc}")
    if isinstance(exc, ValueError | jose.errors.Error | errors.Error):
        return TransientError(f"ACME {what}: unexpected answer from the CA: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class AcmeClient:
    """One ACME account at one CA. Not thread-safe; make one per worker."""

    def __init__(self, directory_url: str, account_key_pem: bytes, *, ca_file: str = "",
                 contact_email: str = "", eab_kid: str = "", eab_hmac: str = "",
                 timeout_s: int = 30, deadline_s: float = 120.0, poll_start_s: float = 0.05,
                 poll_max_s: float = 1.0, nonce_retries: int = 3, key_type: str = "ec256") -> None:
        if not directory_url:
            raise ConfigurationError("acme_directory is not set")
        self.directory_url = directory_url
        try:
            key = serialization.load_pem_private_key(account_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"unreadable ACME account key: {exc}") from exc
        if isinstance(key, ec.EllipticCurvePrivateKey):
            self.account_key: jose.JWK = jose.JWKEC(key=key)
            self._alg: Any = {256: jose.ES256, 384: jose.ES384, 521: jose.ES512}[key.curve.key_size]
        elif isinstance(key, rsa.RSAPrivateKey):
            self.account_key = jose.JWKRSA(key=key)
            self._alg = jose.RS256
        else:
            raise ConfigurationError("the ACME account key must be RSA or EC")
        self.verify: bool | str = ca_file or True
        self.contact_email = contact_email
        self.eab_kid, self.eab_hmac = eab_kid, eab_hmac
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.poll_start_s, self.poll_max_s = poll_start_s, poll_max_s
        self.nonce_retries = nonce_retries
        self.key_type = key_type
        self._client: ClientV2 | None = None
        self.account_uri: str = ""

    # -- plumbing --------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the library; badNonce is retried (the library retries once itself),
        everything else becomes one of our errors."""
        for attempt in range(self.nonce_retries + 1):
            try:
                return fn(*args, **kwargs)
            except messages.Error as exc:
                if exc.code == "badNonce" and attempt < self.nonce_retries:
                    log.info("ACME %s: badNonce, retrying", what)
                    continue
                raise translate(exc, what) from exc
            except (ChallengeRefused, TransientError, ConfigurationError, InvalidInput):
                raise
            except Exception as exc:  # noqa: BLE001 - every library error becomes ours
                raise translate(exc, what) from exc
        raise AssertionError("unreachable")

    def client(self) -> ClientV2:
        """The library client, with the directory fetched and the account registered."""
        if self._client is not None:
            return self._client
        net = ClientNetwork(self.account_key, alg=self._alg, verify_ssl=self.verify,  # type: ignore[arg-type]
                                   user_agent="provisioner", timeout=self.timeout_s)
        directory = self._call("directory", lambda: messages.Directory.from_json(
            net.get(self.directory_url).json()))
        acme = ClientV2(directory, net)
        eab = None
        if self.eab_kid and self.eab_hmac:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.account_key.public_key(), kid=self.eab_kid, hmac_key=self.eab_hmac,
                directory=directory)
        elif acme.external_account_required():
            raise ConfigurationError(f"the CA at {self.directory_url} requires External Account Binding: "
                                     "set acme_eab_kid and acme_eab_hmac")
        reg = messages.NewRegistration.from_data(
            email=self.contact_email or None, terms_of_service_agreed=True, external_account_binding=eab)

        def register() -> messages.RegistrationResource:
            try:
                return acme.new_account(reg)
            except errors.ConflictError as exc:  # this key has an account already: use it
                existing = messages.RegistrationResource(uri=str(exc), body=messages.Registration())
                return acme.query_registration(existing)

        regr = self._call("account registration", register)
        self.account_uri = regr.uri
        self._client = acme
        return acme

    def register(self) -> str:
        self.client()
        return self.account_uri

    # -- issuance --------------------------------------------------------------------
    def issue(self, names: Sequence[str], solver_for: Callable[[str], ChallengeSolver],
              key_pem: bytes | None = None) -> IssuedCertificate:
        """Order a certificate for `names`, answer each authorization through the solver
        `solver_for(name)` picks, finalize, and return key + chain. Challenges are removed
        again whatever happens."""
        if not names:
            raise InvalidInput("a certificate needs at least one name")
        acme = self.client()
        deadline = time.monotonic() + self.deadline_s
        key_pem = key_pem or generate_key_pem(self.key_type)
        csr = crypto_util.make_csr(key_pem, list(names))
        order = self._call("new order", acme.new_order, csr)
        cleanups: list[Callable[[], None]] = []
        used: dict[str, str] = {}
        try:
            pending: list[tuple[str, str, messages.AuthorizationResource]] = []
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue
                name = authzr.body.identifier.value
                if authzr.body.wildcard:
                    name = f"*.{name}"
                solver = solver_for(name)
                challb = self._pick(authzr, solver.kind, name)
                cleanups.append(solver.publish(name, challb, self.account_key))
                used[name] = solver.kind
                pending.append((name, solver.kind, authzr))
                response = challb.chall.response(self.account_key)
                self._call(f"answer {solver.kind} for {name}", acme.answer_challenge, challb, response)
            self._wait_authorizations(acme, pending, deadline)
            order = self._finalize(acme, order, deadline)
        finally:
            for cleanup in cleanups:
                try:
                    cleanup()
                except Exception:  # noqa: BLE001 - a leftover challenge is harmless; log it
                    log.warning("could not remove a challenge", exc_info=True)
        chain = (order.fullchain_pem or "").encode()
        check_key_matches(key_pem, chain)
        info = certificate_info(chain)
        return IssuedCertificate(tuple(names), key_pem, chain, info.not_after, info.serial, used)

    @staticmethod
    def _pick(authzr: messages.AuthorizationResource, kind: str, name: str) -> messages.ChallengeBody:
        want = _CHALLENGE_TYPES[kind]
        for challb in authzr.body.challenges:
            if isinstance(challb.chall, want):
                return challb
        offered = ", ".join(c.chall.typ for c in authzr.body.challenges)
        raise InvalidInput(f"the CA offers no {kind} challenge for {name} (offered: {offered})")

    def _sleep(self, delay: float, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError("ACME: the CA did not finish before the deadline")
        time.sleep(min(delay, left))
        return min(delay * 1.25, self.poll_max_s)

    def _wait_authorizations(self, acme: ClientV2,
                             pending: Iterable[tuple[str, str, messages.AuthorizationResource]],
                             deadline: float) -> None:
        failures: list[tuple[str, str, str]] = []
        for name, kind, authzr in pending:
            delay = self.poll_start_s
            while True:
                authzr, _ = self._call(f"poll authorization of {name}", acme.poll, authzr)
                status = authzr.body.status
                if status == messages.STATUS_VALID:
                    break
                if status != messages.STATUS_PENDING and status != messages.STATUS_PROCESSING:
                    reasons = [_problem(c.error) for c in authzr.body.challenges if c.error is not None]
                    failures.append((name, kind, "; ".join(reasons) or f"authorization {status.name}"))
                    break
                delay = self._sleep(delay, deadline)
        if failures:
            raise ChallengeRefused(failures)

    def _finalize(self, acme: ClientV2, order: messages.OrderResource,
                  deadline: float) -> messages.OrderResource:
        order = self._call("finalize", acme.begin_finalization, order)
        delay = self.poll_start_s
        while True:
            body = order.body
            if body.status == messages.STATUS_VALID and body.certificate:
                resp = self._call("download certificate", acme._post_as_get, body.certificate)
                return order.update(fullchain_pem=resp.text)
            if body.status == messages.STATUS_INVALID:
                detail = _problem(body.error) if body.error is not None else "no reason given"
                raise InvalidInput(f"ACME: the CA refused to issue the certificate: {detail}")
            if body.status == messages.STATUS_READY:
                order = self._call("finalize", acme.begin_finalization, order)
                continue
            delay = self._sleep(delay, deadline)
            resp = self._call("poll order", acme._post_as_get, order.uri)
            order = order.update(body=messages.Order.from_json(resp.json()))


def solver_chooser(http: ChallengeSolver | None, dns: ChallengeSolver | None,
                   dns_names: Callable[[str], bool], force: str = "auto") -> Callable[[str], ChallengeSolver]:
    """Pick DNS-01 for wildcards and names whose zone we host (when a DNS solver is
    given), HTTP-01 otherwise. `force` = "http-01" | "dns-01" overrides (not for wildcards)."""

    def choose(name: str) -> ChallengeSolver:
        wildcard = name.startswith("*.")
        if force == "dns-01" or wildcard or (force == "auto" and dns is not None and dns_names(name)):
            if dns is None or not dns_names(name):
                raise InvalidInput(f"{name}: a DNS-01 challenge needs its zone on our DNS server"
                                   + (" (wildcards can only be validated through DNS)" if wildcard else ""))
            return dns
        if http is None:
            raise InvalidInput(f"{name}: no HTTP-01 target for a name whose DNS we do not host")
        return http

    return choose
