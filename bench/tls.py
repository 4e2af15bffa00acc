"""Benchmark of certificate issuance (issue 5) against the bare `acme` flow.

One run starts Knot, a loopback nginx and Pebble (``provisioner.devstack.dns_tls``),
creates the zones, and then issues N certificates (default 20; half HTTP-01 for a site
and its www, half DNS-01, every fourth DNS-01 one a wildcard) in two ways, interleaved:

* ``adapter``: ``AcmeClient.issue`` (our adapter: error translation, badNonce retries,
  deadlines, challenge clean-up; HTTP-01 through ``LocalNginxTarget``, DNS-01 through
  ``DnsServer``: RFC 2136 + TSIG, waiting until Knot answers the TXT);
* ``bare``: the minimal flow with the `acme` library alone (``new_order``, answer,
  ``poll_and_finalize``), publishing the challenge with the same mechanisms (a file in
  the webroot, the same TSIG-signed DNS update). This is the ceiling the issue names.

The library's ``poll_and_finalize`` sleeps one second between polls, which dominates
the bare flow; ``bare_fastpoll`` is the same minimal flow polling every 50 ms, so the
adapter's own overhead is visible too. Deployment (``deploy``: write, nginx -t, reload,
wait until served) is measured separately for the adapter's certificates.

Prints one JSON document and writes it to ``--out``::

    .venv/bin/python bench/tls.py --certs 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner.adapters.acme import (  # noqa: E402
    AcmeClient,
    Dns01Solver,
    Http01Solver,
    generate_key_pem,
    solver_chooser,
)
from provisioner.adapters.dns import DnsServer, KnotcZoneCreator  # noqa: E402
from provisioner.devstack.dns_tls import local_dns_and_ca  # noqa: E402
from provisioner.devstack.local_nginx import LocalNginxTarget  # noqa: E402
from provisioner.domain.dns_records import HostedZone, hosting_zone_records  # noqa: E402


class Bare:
    """The minimal acme flow: one account, then order -> answer -> poll -> finalize."""

    def __init__(self, directory: str, ca_file: str, target: LocalNginxTarget, dns: DnsServer,
                 fast_poll: bool) -> None:
        key = serialization.load_pem_private_key(generate_key_pem(), password=None)
        self.net = client.ClientNetwork(jose.JWKEC(key=key), alg=jose.ES256,
                                        verify_ssl=ca_file, user_agent="bare")  # type: ignore[arg-type]
        self.acme = client.ClientV2(messages.Directory.from_json(self.net.get(directory).json()), self.net)
        self.acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        self.target, self.dns, self.fast_poll = target, dns, fast_poll

    def issue(self, names: list[str], kind: str) -> str:
        assert self.net.key is not None
        order = self.acme.new_order(crypto_util.make_csr(generate_key_pem(), names))
        for authzr in order.authorizations:
            name = ("*." if authzr.body.wildcard else "") + authzr.body.identifier.value
            want = challenges.DNS01 if kind == "dns-01" else challenges.HTTP01
            challb = next(c for c in authzr.body.challenges if isinstance(c.chall, want))
            chall: Any = challb.chall
            if kind == "dns-01":
                self.dns.set_txt(chall.validation_domain_name(name.removeprefix("*.")),
                                 chall.validation(self.net.key))
            else:
                self.target.publish_challenge(chall.encode("token"), chall.validation(self.net.key))
            self.acme.answer_challenge(challb, chall.response(self.net.key))
        deadline = dt.datetime.now() + dt.timedelta(seconds=90)
        if not self.fast_poll:
            return self.acme.poll_and_finalize(order, deadline).fullchain_pem
        for authzr in order.authorizations:
            while True:
                authzr, _ = self.acme.poll(authzr)
                if authzr.body.status != messages.STATUS_PENDING:
                    break
                time.sleep(0.05)
        order = self.acme.begin_finalization(order)
        while order.body.status != messages.STATUS_VALID:
            if order.body.status == messages.STATUS_INVALID:
                raise errors.Error("order invalid")
            time.sleep(0.05)
            resp = self.acme._post_as_get(order.uri)
            order = order.update(body=messages.Order.from_json(resp.json()))
        return self.acme._post_as_get(order.body.certificate).text


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_s": p50(values), "min_s": round(ordered[0], 4), "max_s": round(ordered[-1], 4),
            "p90_s": round(ordered[max(0, int(len(ordered) * 0.9) - 1)], 4), "n": len(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--certs", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tls.json")
    args = p.parse_args()
    n = args.certs
    with tempfile.TemporaryDirectory(prefix="prov-bench-tls-") as tmp, local_dns_and_ca(Path(tmp)) as env:
        dns = DnsServer(env.knot.host, env.knot.port, env.knot.tsig_key_name, env.knot.tsig_secret,
                        env.knot.tsig_algorithm, KnotcZoneCreator(env.knot.socket))
        target = LocalNginxTarget(env.nginx)
        ca = str(env.pebble.ca_file)
        flows: dict[str, Any] = {
            "adapter": AcmeClient(env.pebble.directory, generate_key_pem(), ca_file=ca),
            "bare": Bare(env.pebble.directory, ca, target, dns, fast_poll=False),
            "bare_fastpoll": Bare(env.pebble.directory, ca, target, dns, fast_poll=True),
        }
        flows["adapter"].register()
        work: list[tuple[str, bool]] = []
        for i in range(n):
            kind = "http-01" if i % 2 == 0 else "dns-01"
            work.append((kind, kind == "dns-01" and i % 4 == 3))
        timings: dict[str, dict[str, list[float]]] = {f: {"http-01": [], "dns-01": []} for f in flows}
        deploy: list[float] = []
        for i, (kind, wildcard) in enumerate(work):
            for flow, impl in flows.items():
                zone = f"b{i}-{flow.replace('_', '-')}.test"
                dns.ensure_zone(zone, hosting_zone_records(HostedZone(
                    zone, ("ns1.provider.example",), "hostmaster@provider.example", ("127.0.0.1",))))
                names = [f"*.{zone}", zone] if wildcard else [zone, f"www.{zone}"]
                if flow == "adapter":
                    target.add_site(names[0], names[1:])
                    choose: Callable[[str], Any] = solver_chooser(
                        Http01Solver(target), Dns01Solver(dns), lambda _n: True, kind)
                    t0 = time.perf_counter()
                    issued = impl.issue(names, choose)
                    timings[flow][kind].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    target.deploy(names[0], issued.key_pem, issued.chain_pem)
                    deploy.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    chain = impl.issue(names, kind)
                    timings[flow][kind].append(time.perf_counter() - t0)
                    assert chain.startswith("-----BEGIN CERTIFICATE-----")
    results: dict[str, Any] = {}
    for flow, by_kind in timings.items():
        every = by_kind["http-01"] + by_kind["dns-01"]
        results[flow] = {"all": summary(every), "http-01": summary(by_kind["http-01"]),
                         "dns-01": summary(by_kind["dns-01"])}
    ours = results["adapter"]["all"]["p50_s"]
    report = {
        "benchmark": "tls",
        "certs": n,
        "mix": {"http-01": len(timings["adapter"]["http-01"]), "dns-01": len(timings["adapter"]["dns-01"]),
                "wildcards": sum(1 for _, w in work if w)},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "results": results,
        "adapter_deploy": summary(deploy),
        "ratio_adapter_to_bare": round(ours / results["bare"]["all"]["p50_s"], 3),
        "ratio_adapter_to_bare_fastpoll": round(ours / results["bare_fastpoll"]["all"]["p50_s"], 3),
        "target_ratio": 1.3,
    }
    report["pass"] = report["ratio_adapter_to_bare"] <= 1.3
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
