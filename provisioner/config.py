"""Settings: one place. Environment variables ``PROVISIONER_*`` win over a TOML file.

The TOML file is named by ``PROVISIONER_CONFIG`` and holds the same keys in lower case
(``database_url = "..."``). Every setting has an embedded default so that the demo
runs with nothing configured.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from provisioner.domain.policy import BRANDS, get_brand
from provisioner.errors import ConfigurationError

_DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "provisioner"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _DEFAULT_DATA_DIR
    database_url: str = ""  # default: sqlite file in data_dir
    broker_url: str = ""  # default: kombu's filesystem transport in data_dir/broker
    brand: str = "fcb"
    line_kinds: str = "all"  # capabilities that plan steps: "all" or e.g. "hosting,tls"
    api_token: str = ""  # ops API bearer token; empty means the ops API refuses everyone
    stripe_webhook_secret: str = ""
    stripe_tolerance_s: int = 300
    # card refunds (withdrawals) through Stripe's API with the account's secret key; empty:
    # card refunds become ops tasks. The base is Stripe's, or a local stand-in in tests.
    stripe_secret_key: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    braintree_environment: str = "sandbox"
    braintree_merchant_id: str = ""
    braintree_public_key: str = ""
    braintree_private_key: str = ""
    paypal_webhook_id: str = ""
    paypal_cert_hosts: str = "api.paypal.com,api-m.paypal.com,api.sandbox.paypal.com,api-m.sandbox.paypal.com"
    paypal_ca_file: str = ""  # extra CA bundle for fetching the signing certificate
    # A PayPal payment settles only once PayPal's REST API confirms the capture
    # (GET /v2/payments/captures/{id}), with the REST app's OAuth2 client credentials.
    paypal_api_base: str = "https://api-m.paypal.com"  # sandbox: https://api-m.sandbox.paypal.com
    paypal_client_id: str = ""
    paypal_client_secret: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    # the sender of ops mails; a customer's mails come from the brand's `mail_from`
    mail_from: str = "Provisioner <billing@provider.example>"
    ops_email: str = "ops@provider.example"
    step_lease_s: int = 120
    step_max_attempts: int = 5
    step_backoff_s: float = 2.0
    redrive_interval_s: float = 15.0
    max_body_bytes: int = 5 * 1024 * 1024  # every request body, every route (413 above it)
    api_docs_public: bool = False  # /docs, /redoc, /openapi.json without the bearer token
    key_dir: str = ""  # the key files (0700); default: data_dir/keys. Keep it off DB backups.
    public_base_url: str = "http://127.0.0.1:8000"
    # domain registry (EPP over TLS); the default is the sandbox registry on this machine
    # (`provisioner registry-sandbox`), whose CA file lives in data_dir/registry/tls/ca.pem
    registry_host: str = "127.0.0.1"
    registry_port: int = 7700
    registry_login: str = "provisioner"
    registry_password: str = "sandbox-pw-1"  # noqa: S105 - the local sandbox's account
    registry_ca_file: str = ""  # default: data_dir/registry/tls/ca.pem when it exists
    registry_timeout_s: float = 30.0
    nameservers: str = "ns1.provider.example,ns2.provider.example"
    whois_privacy_default: bool = True  # WHOIS privacy for persons unless they opt out
    domain_auth_key: str = ""  # Fernet key for stored transfer codes; default: a key file
    # DNS (issue 5): our authoritative server, RFC 2136 with TSIG; knotc for new zones.
    dns_server: str = ""  # empty: no DNS adapter (dns.zone steps fail with a clear error)
    dns_port: int = 53
    dns_knotc_socket: str = ""  # Knot's control socket; empty: zones must already exist
    tsig_key_name: str = ""
    tsig_secret: str = ""
    tsig_algorithm: str = "hmac-sha256"
    dns_nameservers: str = "ns1.provider.example,ns2.provider.example"
    dns_hostmaster: str = "hostmaster@provider.example"
    dns_site_ipv4: str = ""  # the hosting node's addresses (comma-separated)
    dns_site_ipv6: str = ""
    dns_mail_host: str = ""  # default: mail.<zone>
    dns_timeout_s: float = 10.0
    # TLS (issue 5): an ACME CA; the certificate keys are stored encrypted (Fernet).
    acme_directory: str = ""
    acme_ca_file: str = ""  # CA bundle for the ACME server's own TLS (Pebble's listener)
    acme_eab_kid: str = ""
    acme_eab_hmac: str = ""
    acme_contact_email: str = ""
    acme_deadline_s: float = 120.0
    acme_key_type: str = "ec256"
    tls_key_encryption_key: str = ""  # Fernet key; empty: generated into key_dir/tls-fernet.key
    tls_renew_days: int = 30
    # Hosting nodes, reached as root over SSH (Ansible and paramiko). Host keys are
    # checked against node_known_hosts (empty: this user's ~/.ssh/known_hosts) for every
    # node but those registered as throwaway hosts (`nodes add --throwaway`).
    node_ssh_key: str = ""  # private key file; empty: ssh's own default keys
    node_known_hosts: str = ""
    # the "site disabled" page on a node links here; empty: the brand's web site
    provider_url: str = ""
    # GDPR (issue 17, item 10). Data residency: the countries (ISO 3166 alpha-2, and "EU"
    # for every EU/EEA member) where nodes, backup targets and the SMTP relay may keep
    # personal data; checked at start-up (pipeline/usecases/residency.py).
    allowed_countries: str = "SI,EU"
    node_country_default: str = "SI"  # `nodes add` without --country
    smtp_relay_country: str = "SI"  # where smtp_host keeps the mails it relays
    breach_reminder_hours: float = 6.0  # an open breach reminds ops this often
    # The maintenance window's zone (the hours are the brand's `maintenance_window`).
    maintenance_timezone: str = "Europe/Ljubljana"
    # Customer pages and the migration intake (issues 13, 18). The access data name a
    # control panel only where the installation has one: its address; empty: none.
    control_panel_url: str = ""
    # the old provider's credentials (migration intake) are sealed with this Fernet key
    # (comma-separated: the first encrypts, all decrypt); empty: key_dir/migration-fernet.key
    migration_source_key: str = ""
    migration_link_ttl_h: int = 168  # the intake link (one week)
    # the customer's backup download (issue 17 item 9): where the archive is built for the
    # download (a private dir per download, removed after it; empty: the system's temp dir)
    backup_download_dir: str = ""
    migration_abandon_days: int = 30  # sealed sources of a migration untouched this long are wiped
    # The migration survey (issue 13 item 3): the caps (RULES: 2 GB, 1 working hour; tests
    # shrink them), our per-message limit (RULES: 50 MB), the sample it times, the
    # versions it compares the old provider's with (roles/hosting_node's PHP, Debian 12's MariaDB).
    migration_cap_bytes: int = 2048 * 1024 * 1024
    migration_cap_s: float = 3600.0
    migration_max_message_bytes: int = 50 * 1024 * 1024
    migration_sample_bytes: int = 4 * 1024 * 1024
    migration_timeout_s: float = 20.0
    migration_node_php: str = "8.2"
    migration_node_mariadb: str = "10.11"
    # The copy (issue 13 items 5-8): progress written to the migration row at most this
    # often; the TTL the site's A/AAAA/MX get in our zone at survey time (for the cut-over).
    migration_progress_interval_s: float = 1.0
    migration_cutover_ttl: int = 300
    # Backups on a backup host (issue 16, restic). Each node's repository password is
    # sealed with this Fernet key (comma-separated: the first encrypts, all decrypt);
    # empty: key_dir/backup-fernet.key. `restic check --read-data-subset` reads this share
    # of the packs each week. The backup host's known_hosts lines are kept per host record.
    backup_password_key: str = ""
    backup_check_subset: str = "10%"
    # VPS (issue 14): the nspawn driver on the VPS hosts registered in our database. A host
    # whose name is in vps_local_hosts (comma-separated) is this machine; others are reached
    # over SSH with node_ssh_key. On every VPS host: the images (a root directory per catalog
    # image, <vps_image_dir>/<image>/), the machines' state and the bridge they sit on.
    # Empty dirs: under data_dir/vps/. vps_access_key seals a machine's root password from
    # its creation until its one-time link holds it (Fernet, comma-separated for rotation;
    # empty: key_dir/vps-fernet.key). vps_enabled=false: no VPS adapter (vps.create fails).
    vps_enabled: bool = True
    vps_local_hosts: str = "local"
    vps_image_dir: str = ""
    vps_state_dir: str = ""
    vps_bridge: str = "provvps0"
    vps_access_key: str = ""
    # Fair use (issue 14 item 6): every live VPS's usage counters are sampled this often;
    # `provisioner vps usage` averages them (a gap longer than 3 intervals is not counted).
    vps_usage_minutes: int = 15

    @property
    def vps_dir(self) -> Path:
        return self.data_dir / "vps"

    @property
    def bank_iban(self) -> str:
        """The bank account of the installation's default brand (`brand`). Each brand's
        customers pay into the brand's own account (`BrandPolicy.iban`)."""
        return get_brand(self.brand).iban

    @property
    def bank_accounts(self) -> tuple[str, ...]:
        """Every brand's bank account: a bank statement of any other is refused whole."""
        return tuple(b.iban for b in BRANDS.values() if b.iban)

    @property
    def node_ssh_key_path(self) -> Path | None:
        return Path(self.node_ssh_key).expanduser() if self.node_ssh_key else None

    @property
    def node_known_hosts_path(self) -> Path | None:
        return Path(self.node_known_hosts).expanduser() if self.node_known_hosts else None

    @property
    def effective_key_dir(self) -> Path:
        return Path(self.key_dir).expanduser() if self.key_dir else self.data_dir / "keys"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "provisioner.sqlite"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"filesystem://{self.data_dir / 'broker'}"

    def with_overrides(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
        if kind in ("bool", bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if kind in ("Path", Path):
            return Path(raw).expanduser()
    except ValueError as exc:
        raise ConfigurationError(f"setting {name}: cannot read {raw!r}: {exc}") from exc
    return raw


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    config_file = env.get("PROVISIONER_CONFIG")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read config file {config_file}: {exc}") from exc
        for key, raw in data.items():
            if key not in known:
                raise ConfigurationError(f"unknown setting {key!r} in {config_file}")
            values[key] = _coerce(key, raw)
    for name in known:
        raw = env.get(f"PROVISIONER_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw)
    return Settings(**values)
