#!/usr/bin/python3
# Managed by roles/hosting_account.
"""Ansible module: converge whole shared-hosting accounts (one or a batch) in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hosting_account
short_description: Converge whole shared-hosting accounts on a hosting node in one call
description:
  - Creates or converges one or many shared-hosting accounts on a node prepared by
    C(roles/hosting_node) and the node-wide support of C(roles/hosting_account) -
    the system user, home and document root, the disk quota, the state file in
    C(/etc/hosting/accounts), the slice limits, the PHP-FPM pool and service, the nginx
    site, the MariaDB database and user with their size cap, the mail domains and
    mailboxes, the FTP(S) login and the cron entries.
  - Observes first and writes only the difference, so running it again changes nothing
    and a run cut off part-way can simply be run again. systemd is reloaded, nginx
    reloaded, Postfix reloaded and each PHP-FPM service (re)started at most once per
    call, and only when something they read changed.
  - Every name is checked, never escaped; one bad account refuses the whole call before
    anything is written.
  - Also suspends, unsuspends, changes the plan of, and sets new passwords of existing
    accounts.
options:
  action:
    description:
      - C(create) converges (an existing account keeps its suspension);
        C(suspend) and C(unsuspend) converge into that state; C(change_plan) converges
        with the new limits; C(reset_password) only sets the secrets named in I(reset).
      - All but C(create) refuse an account that does not exist on the node.
    type: str
    choices: [create, suspend, unsuspend, change_plan, reset_password]
    default: create
  accounts:
    description: The accounts.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The system user name, C([a-z][a-z0-9]{0,31}), not a reserved name (the rule is
          module_utils/hosting_names.py, the controller's too).
        type: str
        required: true
      domains:
        description: The site's domains; the first is the main one (mail addresses).
        type: list
        elements: str
        required: true
      plan:
        description: The plan's code (recorded and shown in the files).
        type: str
      limits:
        description: The plan's limits (positive integers); missing ones come from I(default_limits).
        type: dict
      mailboxes:
        description: Mailboxes C({local, password, quota_mb}).
        type: list
        elements: dict
        default: []
        suboptions:
          local:
            description: The part before C(@).
            type: str
            required: true
          password:
            description:
              - Set only when the mailbox is new (or on C(reset_password), or with I(set_passwords)).
            type: str
            no_log: true
          quota_mb:
            description: A quota other than the plan's C(mailbox_mb).
            type: int
      cron:
        description: Cron entries C({minute, hour, day, month, weekday, command}).
        type: list
        elements: dict
        default: []
      password:
        description:
          - The FTP(S) password; set only when the login is new (or on C(reset_password), or
            with I(set_passwords)).
        type: str
        no_log: true
      db_password:
        description:
          - The MariaDB user's password; set only when the user is new (or on C(reset_password),
            or with I(set_passwords)).
        type: str
        no_log: true
      suspended:
        description: With C(create), force this suspension state instead of keeping the recorded one.
        type: bool
      brand:
        description:
          - The brand of the account's customer; suspended, it shows I(suspended_dir)/<brand>.html
            (the role renders it). Empty - the node's page (snippets/hosting-account-suspended.conf).
        type: str
        default: ""
  default_plan:
    description: Plan code for accounts that name none.
    type: str
    default: mega
  default_limits:
    description: Limits for accounts that miss some.
    type: dict
    default: {}
  set_passwords:
    description:
      - With C(create), also set the given secrets on logins that exist already (every
        account must name all of them). Without it an existing login keeps its password.
    type: bool
    default: false
  password_fence:
    description:
      - A fencing token for the secrets this call sets (with I(set_passwords) or
        C(reset_password)); the pipeline passes its step's attempt number. Each account
        keeps the highest token that set its secrets (C(/etc/hosting/accounts/NAME.fence));
        a call with a lower one changes nothing and fails (a newer run has set secrets that
        are being sent to the customer). C(0) checks and records nothing.
    type: int
    default: 0
  reset:
    description: With C(reset_password), which secrets to set.
    type: list
    elements: str
    choices: [ftp, db, mail]
    default: [ftp, db, mail]
  support_version:
    description:
      - The node-wide support version the accounts need. When the node has another one
        (or misses a piece of it), the module changes nothing and returns
        C(support_needed=true), so that the role installs the support and calls again.
        C("") skips the check.
    type: str
    default: ""
  node_root:
    description: Where the homes are.
    type: path
    default: /srv/hosting
  accounts_group:
    description: The group every account's user is in.
    type: str
    default: hosting
  php_conf_dir:
    description: Directory of the accounts' PHP-FPM configurations.
    type: path
    default: /etc/php/8.2/fpm/hosting
  php_memory_limit:
    description: PHP C(memory_limit) of every pool.
    type: str
    default: 256M
  php_max_children:
    description: C(pm.max_children) of every pool.
    type: int
    default: 5
  io_device:
    description:
      - Block device for the slices' IOPS limits (C(IOReadIOPSMax=)/C(IOWriteIOPSMax=)).
      - C(auto) finds it from I(node_root) (the whole disk under the filesystem of the
        accounts' homes, from its device number in /sys/dev/block); none is found when
        I(node_root) is not on a block device (overlayfs, tmpfs). C("") = no IOPS limit.
    type: str
    default: auto
  helper:
    description: The node-side helper whose login-file and MariaDB logic this module reuses.
    type: path
    default: /usr/local/sbin/hosting-account
  suspended_dir:
    description: Directory of the "site disabled" pages (one per brand, <brand>.html).
    type: path
    default: /var/www/hosting-suspended
notes:
  - Supports check mode (reports what would change, writes nothing).
  - Passwords are never returned and never logged.
  - The home belongs to the customer, whose processes may swap any name in it for a
    symbolic link at any moment; the module reaches the home, public_html and tmp
    through directory descriptors (O_NOFOLLOW), sets their owner and mode through them
    and creates index.html in the directory it opened. A link where a directory belongs
    refuses the account; nothing outside the home is touched.
author: provisioner
"""

EXAMPLES = r"""
- name: Converge one account.
  hosting_account:
    accounts:
      - name: examplesi
        domains: [example.si]
        plan: giga5
        limits: "{{ hosting_account_limits }}"
        mailboxes: [{local: info, password: "{{ info_password }}"}]
        password: "{{ ftp_password }}"
        db_password: "{{ db_password }}"

- name: Converge twenty accounts in one call.
  hosting_account:
    accounts: "{{ hosting_account_batch }}"
    default_limits: "{{ hosting_account_limits }}"

- name: Suspend an account (the site shows the disabled page; logins are refused).
  hosting_account:
    action: suspend
    accounts: [{name: examplesi, domains: [example.si]}]
"""

RETURN = r"""
support_needed:
  description: True when the node lacks the support version asked for (nothing was done).
  returned: always
  type: bool
accounts:
  description: Per account, the parts that changed (or would change, in check mode).
  returned: always
  type: dict
  sample: {examplesi: [user, home, state, slice, php, vhost, db, mail, ftp]}
timings:
  description: Seconds spent in each part of the converge (for benchmarks).
  returned: success
  type: dict
reloaded:
  description: The node-wide reloads and restarts this call did.
  returned: always
  type: list
  sample: [daemon-reload, nginx, postfix]
"""

import contextlib
import errno
import fcntl
import grp
import importlib.machinery
import importlib.util
import json
import os
import pwd
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hosting_names import ACCOUNT_NAME_PATTERN, RESERVED_ACCOUNT_NAMES, account_name_problem

STARTED = time.monotonic()

DOMAIN_RE = re.compile(r"(?=.{4,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}\Z")
LOCAL_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?\Z")
PLAN_RE = re.compile(r"[a-z0-9_-]{1,32}\Z")
MEMORY_RE = re.compile(r"[0-9]{1,6}[KMG]?\Z")
DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9/_-]{1,64}\Z")
BRAND_RE = re.compile(r"[a-z][a-z0-9]{0,15}\Z")
LIMITS = ("disk_mb", "mailbox_mb", "upload_max_mb", "database_max_mb", "message_max_mb", "recipients_max",
          "mail_per_hour", "mail_per_month", "cron_min_interval_min", "cpu_percent", "memory_mb", "vmem_mb",
          "iops", "tasks_max")
MANAGED = "Managed by roles/hosting_account (module hosting_account). Do not edit by hand."
STATE_DIR = "/etc/hosting/accounts"
SYSTEMD = "/etc/systemd/system"
WANTS = SYSTEMD + "/multi-user.target.wants"
PHP_UNIT = SYSTEMD + "/hosting-php@.service"
NGINX_AVAILABLE = "/etc/nginx/sites-available"
NGINX_ENABLED = "/etc/nginx/sites-enabled"
POSTFIX_DOMAINS = "/etc/postfix/virtual_mailbox_domains"
POSTFIX_MAILBOXES = "/etc/postfix/virtual_mailbox_maps"
# The accounts Postfix's postdrop refuses (roles/hosting_node's authorized_submit_users):
# their sendmail goes over SMTP, through the sending limits.
POSTFIX_SUBMIT_DENY = "/etc/postfix/hosting_submit_deny"
SUPPORT_STAMP = "/etc/hosting/.support-version"
NAMES_FILE = "/usr/local/lib/hosting/hosting_names.py"  # the helpers' copy of module_utils/hosting_names.py
LOCK = "/run/hosting-account.lock"


class Refused(Exception):
    """A bad input: the whole call is refused before anything is written."""


# -- the files, rendered from the account (the role's former templates, same content) ------
def render_vhost(a, suspended):
    names = " ".join("%s www.%s" % (d, d) for d in a["domains"])
    lines = [
        "# " + MANAGED,
        "# Hosting account %s, plan %s%s." % (a["name"], a["plan"], " (SUSPENDED)" if suspended else ""),
        "server {",
        "    listen 80;",
        "    listen [::]:80;",
        "    server_name %s;" % names,
        "    access_log /var/log/nginx/hosting-%s.access.log hosting;" % a["name"],
        "    error_log /var/log/nginx/hosting-%s.error.log;" % a["name"],
        "    # Largest single upload of the plan (+1 MB for the multipart envelope).",
        "    client_max_body_size %dm;" % (a["limits"]["upload_max_mb"] + 1),
        "    # HTTPS for this server: the certificate deploy (provisioner's TLS step, over SSH)",
        "    # writes listen 443 ssl + certificate paths here; nothing there means HTTP only.",
        "    include /etc/nginx/hosting-tls/%s/*.conf;" % a["name"],
    ]
    if suspended and a.get("brand"):  # the page of the account's brand (the role renders it)
        lines += [
            "    root %s;" % a["suspended_dir"],
            "    error_page 503 /%s.html;" % a["brand"],
            "    location = /%s.html { internal; }" % a["brand"],
            "    location / { return 503; }",
        ]
    elif suspended:
        lines.append("    include snippets/hosting-account-suspended.conf;")
    else:
        lines += [
            "    root %s;" % a["docroot"],
            "    index index.php index.html index.htm;",
            "    location ~ /\\.(?!well-known/) {",
            "        deny all;",
            "    }",
            "    location / {",
            "        try_files $uri $uri/ =404;",
            "    }",
            "    location ~ \\.php$ {",
            "        try_files $uri =404;",
            "        include fastcgi_params;",
            "        fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;",
            "        fastcgi_param HTTPS $https if_not_empty;",
            "        fastcgi_read_timeout 120s;",
            "        fastcgi_pass unix:%s;" % a["socket"],
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_pool(a, p):
    home, n, lim = a["home"], a["name"], a["limits"]
    return "\n".join([
        "; " + MANAGED,
        "; PHP-FPM of hosting account %s (plan %s)." % (n, a["plan"]),
        "[global]",
        "pid = /run/hosting-php-%s/php-fpm.pid" % n,
        "error_log = syslog",
        "syslog.ident = php-fpm-%s" % n,
        "daemonize = no",
        "",
        "[%s]" % n,
        "user = %s" % n,
        "group = %s" % n,
        "listen = %s" % a["socket"],
        "listen.owner = www-data",
        "listen.group = www-data",
        "listen.mode = 0660",
        "pm = ondemand",
        "pm.max_children = %d" % p["php_max_children"],
        "pm.process_idle_timeout = 30s",
        "pm.max_requests = 500",
        "chdir = /",
        "clear_env = yes",
        "env[HOME] = %s" % home,
        "env[TMPDIR] = %s/tmp" % home,
        "php_admin_value[open_basedir] = %s/" % home,
        "php_admin_value[upload_tmp_dir] = %s/tmp" % home,
        "php_admin_value[session.save_path] = %s/tmp" % home,
        "php_admin_value[sys_temp_dir] = %s/tmp" % home,
        "php_admin_value[upload_max_filesize] = %dM" % lim["upload_max_mb"],
        "php_admin_value[post_max_size] = %dM" % (lim["upload_max_mb"] + 1),
        "php_admin_value[memory_limit] = %s" % p["php_memory_limit"],
        "php_admin_value[error_log] = %s/tmp/php-error.log" % home,
        "php_admin_flag[log_errors] = on",
    ]) + "\n"


def render_slice(a, p):
    lim = a["limits"]
    lines = [
        "# " + MANAGED,
        "# Plan %s of hosting account %s" % (a["plan"], a["name"]),
        "# (overrides roles/hosting_node's 10-hosting-defaults.conf).",
        "[Slice]",
        "CPUQuota=%d%%" % lim["cpu_percent"],
        "MemoryMax=%dM" % lim["memory_mb"],
        "MemorySwapMax=0",
        "TasksMax=%d" % lim["tasks_max"],
    ]
    if p["io_device"]:
        lines += ["IOReadIOPSMax=%s %d" % (p["io_device"], lim["iops"]),
                  "IOWriteIOPSMax=%s %d" % (p["io_device"], lim["iops"])]
    return "\n".join(lines) + "\n"


def block_device_of(path, sys_block="/sys/dev/block"):
    """The whole disk holding the filesystem of ``path`` ("/dev/NAME"), or "" when that
    filesystem is not on a block device (overlayfs, tmpfs: device major 0, or no entry in
    /sys/dev/block). A partition gives its disk: IOPS caps are set per disk."""
    while not os.path.exists(path):  # the hosting root is made later in the same run
        path = os.path.dirname(path)
    dev = os.stat(path).st_dev
    entry = "%s/%d:%d" % (sys_block, os.major(dev), os.minor(dev))
    if os.major(dev) == 0 or not os.path.isdir(entry):
        return ""
    real = os.path.realpath(entry)
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    name = os.path.basename(real)
    for line in (read_text(os.path.join(real, "uevent")) or "").splitlines():
        if line.startswith("DEVNAME="):
            name = line.split("=", 1)[1].strip()
    return "/dev/" + name


def render_php_dropin(a):
    return "# %s\n[Service]\nLimitAS=%dM\n" % (MANAGED, a["limits"]["vmem_mb"])


def render_state(a, suspended):
    state = {"name": a["name"], "plan": a["plan"], "domains": a["domains"], "limits": a["limits"],
             "suspended": bool(suspended), "home": a["home"]}
    return json.dumps(state, indent=4, sort_keys=True) + "\n"


def render_index(a):
    d = a["domains"][0]
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8"><title>%s</title></head>\n'
            "<body><h1>%s</h1><p>This site is ready for its content.</p></body></html>\n" % (d, d))


# -- validation -------------------------------------------------------------------------
def positive_int(value, what):
    """A positive whole number (an int, or a string of digits as Jinja may hand it over)."""
    if isinstance(value, bool):
        number = 0
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        number = 0
    if number <= 0:
        raise Refused("Refused: %s must be a positive whole number, not %r" % (what, value))
    return number


def normalize(raw, p, helper):
    """Check one account and fill in what follows from it; raise Refused on anything bad."""
    name = raw.get("name")
    problem = account_name_problem(name)
    if problem is not None:
        raise Refused("Refused: account name %r %s (names are checked, never escaped)" % (name, problem))
    domains = raw.get("domains") or []
    if not domains:
        raise Refused("Refused: account %s has no domain" % name)
    for d in domains:
        if not isinstance(d, str) or not DOMAIN_RE.match(d):
            raise Refused("Refused: bad domain %r of account %s" % (d, name))
    if len(set(domains)) != len(domains):
        raise Refused("Refused: the domains of account %s must differ" % name)
    plan = raw.get("plan") or p["default_plan"]
    if not isinstance(plan, str) or not PLAN_RE.match(plan):
        raise Refused("Refused: bad plan %r of account %s" % (plan, name))
    given = dict(p["default_limits"] or {})
    given.update(raw.get("limits") or {})
    unknown = set(given) - set(LIMITS)
    if unknown:
        raise Refused("Refused: unknown limits %s of account %s" % (sorted(unknown), name))
    missing = [k for k in LIMITS if k not in given]
    if missing:
        raise Refused("Refused: account %s misses the limits %s" % (name, missing))
    limits = {k: positive_int(given[k], "the plan's limit %s" % k) for k in LIMITS}
    boxes = []
    for box in raw.get("mailboxes") or []:
        local = box.get("local")
        if not isinstance(local, str) or not LOCAL_RE.match(local):
            raise Refused("Refused: bad mailbox name %r of account %s" % (local, name))
        if box.get("password"):
            helper.password(box["password"])
        entry = {"local": local, "password": box.get("password") or ""}
        if box.get("quota_mb") is not None:
            entry["quota_mb"] = positive_int(box["quota_mb"], "the quota of mailbox %s" % local)
        boxes.append(entry)
    if len({b["local"] for b in boxes}) != len(boxes):
        raise Refused("Refused: the mailboxes of account %s must differ" % name)
    cron = []
    for i, entry in enumerate(raw.get("cron") or [], 1):
        if not isinstance(entry, dict):
            raise Refused("Refused: cron entry %d of account %s is not a mapping" % (i, name))
        clean = {f: str(entry.get(f, d)) for f, d in (("minute", "0"), ("hour", "*"), ("day", "*"),
                                                      ("month", "*"), ("weekday", "*"))}
        clean["command"] = entry.get("command")
        try:
            helper.check_command(clean["command"])
            gap = helper.min_gap_minutes(clean)
        except helper.Refused as exc:
            raise Refused("Refused: account %s: %s" % (name, exc)) from None
        if gap < limits["cron_min_interval_min"]:
            raise Refused("Refused: account %s: cron entry %d runs every %d minutes; at most once per %d "
                          "minutes is allowed" % (name, i, gap, limits["cron_min_interval_min"]))
        cron.append(clean)
    for key in ("password", "db_password"):
        if raw.get(key):
            helper.password(raw[key])
    brand = raw.get("brand") or ""
    if not isinstance(brand, str) or (brand and not BRAND_RE.match(brand)):
        raise Refused("Refused: bad brand %r of account %s" % (brand, name))
    suspended_dir = p.get("suspended_dir") or "/var/www/hosting-suspended"
    if not suspended_dir.startswith("/var/www/") or ".." in suspended_dir:
        raise Refused("Refused: bad directory of the disabled pages %r" % suspended_dir)
    home = "%s/%s" % (p["node_root"].rstrip("/"), name)
    return {"name": name, "brand": brand, "suspended_dir": suspended_dir.rstrip("/"), "domains": list(domains), "plan": plan, "limits": limits, "mailboxes": boxes,
            "cron": cron, "password": raw.get("password") or "", "db_password": raw.get("db_password") or "",
            "suspended": raw.get("suspended"), "home": home, "docroot": home + "/public_html",
            "socket": "/run/hosting-php-%s/php.sock" % name,
            "php_service": "hosting-php@%s.service" % name, "changed": []}


# -- small observed writes -------------------------------------------------------------
def read_text(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def ensure_file(path, text, mode, check, uid=0, gid=0):
    """Write ``text`` to ``path`` unless it is there already; True when it changed."""
    try:
        st = os.lstat(path)
        same_meta = (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid)
    except FileNotFoundError:
        same_meta = False
    if read_text(path) == text and same_meta:
        return False
    if not check:
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, ".%s.hosting-tmp" % os.path.basename(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chown(tmp, uid, gid)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return True


def open_dir_at(parent_fd, name, shown, missing_ok=True):
    """A descriptor of the directory ``name`` in ``parent_fd``; never through a link.
    FileNotFoundError when it is not there (``missing_ok``), else Refused."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused("Refused: %s is not a directory (a symbolic link or a file took its place)"
                          % shown) from None
        if exc.errno == errno.ENOENT and not missing_ok:  # made, then moved away at once
            raise Refused("Refused: %s is not a directory (it was moved away while being converged)"
                          % shown) from None
        raise


def ensure_dir_at(parent_fd, name, mode, uid, gid, check, shown):
    """The real directory ``name`` in the directory ``parent_fd``, with this owner and
    mode: (changed, its descriptor). Created when missing (mkdirat does not follow a
    link), opened with O_NOFOLLOW|O_DIRECTORY, and its owner and mode set through that
    descriptor (fchown/fchmod), so a link put in its place at any moment is refused, never
    followed. The descriptor is None only in check mode for a directory not there yet."""
    try:
        fd = open_dir_at(parent_fd, name, shown)
        created = False
    except FileNotFoundError:
        if check:
            return True, None
        with contextlib.suppress(FileExistsError):  # made meanwhile: opened (and checked) below
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = open_dir_at(parent_fd, name, shown, missing_ok=False)
        created = True
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, uid, gid):
            if not check:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            created = True
    except BaseException:
        os.close(fd)
        raise
    return created, fd


def ensure_home(root, name, uid, gid, www_gid, index_text, check):
    """The account's home ``root/name`` (its user, group www-data, 0750), its
    ``public_html`` (0755) and ``tmp`` (0700), and a first ``index.html`` where there is
    none (never overwriting the customer's page); True when something changed.

    The home belongs to the customer, whose PHP or cron jobs can swap any name in it for
    a symbolic link at any moment. So below ``root`` (root's own directory) nothing is
    reached by path: each directory is opened from its parent's descriptor without
    following links, its owner and mode are set through its descriptor, and index.html
    is created (O_EXCL|O_NOFOLLOW) in the directory that was opened and checked. A link
    where a directory belongs refuses the account; nothing outside the home is touched."""
    fds = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        changed, home = ensure_dir_at(fds[0], name, 0o750, uid, www_gid, check, "%s/%s" % (root, name))
        if home is None:
            return True
        fds.append(home)
        docroot = None
        for sub, mode in (("public_html", 0o755), ("tmp", 0o700)):
            made, fd = ensure_dir_at(home, sub, mode, uid, gid, check, "%s/%s/%s" % (root, name, sub))
            changed = changed or made
            if fd is not None:
                fds.append(fd)
                if sub == "public_html":
                    docroot = fd
        if docroot is None:
            return True
        try:
            os.stat("index.html", dir_fd=docroot, follow_symlinks=False)
        except FileNotFoundError:
            changed = True
            if not check:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open("index.html", flags, 0o644, dir_fd=docroot)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    os.fchown(fh.fileno(), uid, gid)
                    fh.write(index_text)
        return changed
    finally:
        for fd in fds:
            os.close(fd)


def ensure_link(path, target, check):
    if os.path.islink(path) and os.readlink(path) == target:
        return False
    if not check:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.symlink(target, path)
    return True


def remove_link(path, check):
    if not os.path.lexists(path):
        return False
    if not check:
        os.unlink(path)
    return True


def set_block(text, marker, body):
    """blockinfile: the block between '# BEGIN marker' and '# END marker' (None: none)."""
    begin, end = "# BEGIN %s" % marker, "# END %s" % marker
    lines = (text or "").splitlines()
    block = [begin] + body + [end] if body is not None else []
    if begin in lines and end in lines and lines.index(begin) < lines.index(end):
        i, j = lines.index(begin), lines.index(end)
        lines = lines[:i] + block + lines[j + 1:]
    else:
        lines = lines + block
    return "\n".join(lines) + "\n" if lines else ""


# -- the converge -----------------------------------------------------------------------
class Converge:
    def __init__(self, module, helper, accounts):
        self.m = module
        self.p = module.params
        self.check = module.check_mode
        self.h = helper
        self.accounts = accounts
        self.reloaded = []
        self.timings = {"init": round(time.monotonic() - STARTED, 3)}
        self._t = time.monotonic()

    def lap(self, part):
        now = time.monotonic()
        self.timings[part] = round(now - self._t, 3)
        self._t = now

    def run(self, cmd, **kw):
        rc, out, err = self.m.run_command(cmd, **kw)
        if rc != 0:
            raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(cmd), rc, (err or out).strip()[-400:]))
        return out

    def note(self, a, part, changed):
        if changed and part not in a["changed"]:
            a["changed"].append(part)
        return changed

    def converge(self, action):
        for a in self.accounts:
            state = read_text(os.path.join(STATE_DIR, a["name"] + ".json"))
            recorded = json.loads(state) if state else {}
            if action != "create" and not recorded:
                raise Refused("Account %s does not exist on this node." % a["name"])
            if action == "suspend":
                a["suspend"] = True
            elif action == "unsuspend":
                a["suspend"] = False
            elif a["suspended"] is not None:
                a["suspend"] = bool(a["suspended"])
            else:
                a["suspend"] = bool(recorded.get("suspended", False))
        if action == "reset_password":
            self.check_fence()
            self.reset_password()
            return self.record_fence()
        set_passwords = bool(self.p.get("set_passwords"))
        if set_passwords:
            if action != "create":
                raise Refused("Refused: set_passwords goes with create only")
            self.need_passwords(("ftp", "db", "mail"))
            self.check_fence()
        self.lap("observe")
        self.users()
        self.lap("users")
        self.quota()
        self.lap("quota")
        units_changed = False
        for a in self.accounts:
            self.note(a, "state", ensure_file(os.path.join(STATE_DIR, a["name"] + ".json"),
                                              render_state(a, a["suspend"]), 0o600, self.check))
            slice_dir = "%s/hosting-%s.slice.d" % (SYSTEMD, a["name"])
            unit_dir = "%s/%s.d" % (SYSTEMD, a["php_service"])
            for directory in (slice_dir, unit_dir):
                if not os.path.isdir(directory) and not self.check:
                    os.makedirs(directory, 0o755)
            a["restart"] = any([
                self.note(a, "slice", ensure_file(slice_dir + "/20-limits.conf", render_slice(a, self.p),
                                                  0o644, self.check)),
                self.note(a, "php", ensure_file(unit_dir + "/20-limits.conf", render_php_dropin(a), 0o644,
                                                self.check)),
            ])
            units_changed = units_changed or a["restart"]
            if not os.path.isdir(self.p["php_conf_dir"]) and not self.check:
                os.makedirs(self.p["php_conf_dir"], 0o755)
            if self.note(a, "php", ensure_file("%s/%s.conf" % (self.p["php_conf_dir"], a["name"]),
                                               render_pool(a, self.p), 0o644, self.check)):
                a["restart"] = True
            wants = "%s/%s" % (WANTS, a["php_service"])
            if a["suspend"]:
                units_changed = self.note(a, "php", remove_link(wants, self.check)) or units_changed
            else:
                units_changed = self.note(a, "php", ensure_link(wants, PHP_UNIT, self.check)) or units_changed
        if units_changed and not self.check:
            self.run(["systemctl", "daemon-reload"])
            self.reloaded.append("daemon-reload")
        self.lap("files")
        self.php_services()
        self.lap("php")
        self.web()
        self.lap("web")
        self.databases(set_password=set_passwords)
        self.lap("db")
        self.mail(set_password=set_passwords)
        self.lap("mail")
        self.ftp(set_password=set_passwords)
        self.lap("ftp")
        for a in self.accounts:
            req = {"account": a["name"], "entries": a["cron"],
                   "min_interval": a["limits"]["cron_min_interval_min"]}
            self.note(a, "cron", self.h.op_cron(req, check=self.check)["changed"])
        self.lap("cron")
        if set_passwords:
            self.record_fence()

    # -- parts --
    def users(self):
        group = grp.getgrnam(self.p["accounts_group"])
        try:
            www = grp.getgrnam("www-data").gr_gid
        except KeyError:
            www = 0
        for a in self.accounts:
            n = a["name"]
            try:
                pw = pwd.getpwnam(n)
            except KeyError:
                pw = None
            if pw is not None and pw.pw_uid < 1000:
                raise Refused("Refused: %s is a system user's name." % n)
        for a in self.accounts:
            n = a["name"]
            try:
                pw = pwd.getpwnam(n)
            except KeyError:
                pw = None
            try:
                own_gid = grp.getgrnam(n).gr_gid
            except KeyError:
                own_gid = None
            if pw is None:
                self.note(a, "user", True)
                # One call makes the user and (unless a cut-off run left it) its group.
                group_arg = ["--user-group"] if own_gid is None else ["--gid", n]
                if not self.check:
                    self.run(["useradd"] + group_arg + ["--groups", self.p["accounts_group"], "--home-dir",
                                                        a["home"], "--no-create-home", "--shell",
                                                        "/usr/sbin/nologin", "--password", "!", n])
            elif own_gid is None:
                self.note(a, "user", True)
                if not self.check:
                    self.run(["groupadd", n])
                    self.run(["usermod", "--gid", n, n])
            else:
                fix = []
                if pw.pw_dir != a["home"]:
                    fix += ["--home", a["home"]]
                if pw.pw_shell != "/usr/sbin/nologin":
                    fix += ["--shell", "/usr/sbin/nologin"]
                if own_gid is not None and pw.pw_gid != own_gid:
                    fix += ["--gid", n]
                if n not in group.gr_mem:
                    fix += ["--append", "--groups", self.p["accounts_group"]]
                if fix:
                    self.note(a, "user", True)
                    if not self.check:
                        self.run(["usermod"] + fix + [n])
            if self.check and pw is None:
                self.note(a, "home", True)
                continue
            pw = pwd.getpwnam(n)
            a["uid"], a["gid"] = pw.pw_uid, pw.pw_gid
            self.note(a, "home", ensure_home(self.p["node_root"].rstrip("/"), n, pw.pw_uid, pw.pw_gid, www,
                                             render_index(a), self.check))

    def quota(self):
        root = self.p["node_root"]
        rc, out, _ = self.m.run_command(["quotaon", "-p", "-u", root])
        if "is on" not in out:
            return
        for a in self.accounts:
            soft = a["limits"]["disk_mb"] * 1024
            _, now, _ = self.m.run_command(["quota", "-w", "-u", a["name"]])
            if (" %d " % soft) in now:
                continue
            self.note(a, "quota", True)
            if not self.check:
                self.run(["setquota", "-u", a["name"], str(soft), str(int(soft * 1.05)), "0", "0", root])

    def php_services(self):
        units = [a["php_service"] for a in self.accounts]
        if not units:
            return
        rc, out, _ = self.m.run_command(["systemctl", "is-active"] + units)
        active = dict(zip(units, out.split()))
        stop, start, restart = [], [], []
        for a in self.accounts:
            running = active.get(a["php_service"]) in ("active", "activating", "reloading")
            if a["suspend"]:
                if running:
                    stop.append(a["php_service"])
                    self.note(a, "php", True)
            elif not running:
                start.append(a["php_service"])
                self.note(a, "php", True)
            elif a["restart"]:
                restart.append(a["php_service"])
        if self.check:
            return
        for verb, group in (("stop", stop), ("restart", restart), ("start", start)):
            if group:
                self.run(["systemctl", verb] + group)
                self.reloaded.append("php %s" % verb)

    def web(self):
        old = {}
        for a in self.accounts:
            path = "%s/hosting-%s.conf" % (NGINX_AVAILABLE, a["name"])
            before = read_text(path)
            if self.note(a, "vhost", ensure_file(path, render_vhost(a, a["suspend"]), 0o644, self.check)):
                old[path] = before
            link = "%s/hosting-%s.conf" % (NGINX_ENABLED, a["name"])
            if self.note(a, "vhost", ensure_link(link, path, self.check)):
                old.setdefault(path, before)
        if not old or self.check:
            return
        rc, out, err = self.m.run_command(["nginx", "-t", "-q"])
        if rc != 0:  # put the previous files back, so that nginx keeps working
            for path, before in old.items():
                if before is None:
                    for stale in (path.replace(NGINX_AVAILABLE, NGINX_ENABLED), path):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(stale)
                else:
                    ensure_file(path, before, 0o644, False)
            raise RuntimeError("nginx refused the new sites: %s" % (err or out).strip()[-400:])
        self.run(["systemctl", "reload", "nginx"])
        self.reloaded.append("nginx")

    def databases(self, set_password=False):
        conn = None if self.check and not os.path.exists("/run/mysqld/mysqld.sock") else self.h.connect()
        try:
            for a in self.accounts:
                req = {"account": a["name"], "password": a["db_password"],
                       "max_mb": a["limits"]["database_max_mb"], "locked": a["suspend"],
                       "set_password": set_password}
                if conn is None:
                    self.note(a, "db", True)
                    continue
                self.note(a, "db", self.h.op_db(req, conn=conn, check=self.check)["changed"])
        finally:
            if conn is not None:
                conn.close()

    def mail(self, set_password=False, maps=True):
        maps_changed = False
        if maps:
            for path, body in ((POSTFIX_DOMAINS, lambda a: ["%s OK" % d for d in a["domains"]]),
                               (POSTFIX_MAILBOXES, lambda a: ["%s@%s OK" % (b["local"], a["domains"][0])
                                                              for b in a["mailboxes"]] or None),
                               (POSTFIX_SUBMIT_DENY, lambda a: ["%s x" % a["name"]])):
                before = read_text(path)
                text = before
                for a in self.accounts:
                    after = set_block(text, "hosting account %s" % a["name"], body(a))
                    self.note(a, "mail", after != text)
                    text = after
                if text != (before or ""):
                    maps_changed = True
                    if not self.check:
                        ensure_file(path, text, 0o644, False)
        reqs = [{"account": a["name"], "domains": a["domains"], "mailboxes": a["mailboxes"],
                 "quota_mb": a["limits"]["mailbox_mb"], "set_password": set_password,
                 "suspended": a["suspend"]} for a in self.accounts]
        changed = self.h.mail_apply(reqs, check=self.check)
        for a in self.accounts:
            self.note(a, "mail", changed[a["name"]])
        if maps_changed and not self.check:
            self.run(["systemctl", "reload", "postfix"])
            self.reloaded.append("postfix")

    def ftp(self, set_password=False):
        reqs = []
        for a in self.accounts:
            if "uid" not in a:  # check mode, user not there yet
                self.note(a, "ftp", True)
                continue
            reqs.append({"login": a["name"], "uid": a["uid"], "gid": a["gid"], "home": a["home"],
                         "password": a["password"], "set_password": set_password, "suspended": a["suspend"]})
        changed = self.h.ftp_apply(reqs, check=self.check) if reqs else {}
        for a in self.accounts:
            self.note(a, "ftp", changed.get(a["name"], False))

    def fence_file(self, a):
        return os.path.join(STATE_DIR, a["name"] + ".fence")

    def check_fence(self):
        """Refuse (before any secret is set) when a call with a higher fencing token has set
        an account's secrets: this call's secrets are stale. Under the node's lock."""
        token = int(self.p.get("password_fence") or 0)
        if token <= 0:
            return
        for a in self.accounts:
            text = read_text(self.fence_file(a))
            newest = int(text) if text and text.strip().isdigit() else 0
            if token < newest:
                raise Refused("Refused: the secrets of %s were set by a newer run (fence %d > %d); "
                              "these are stale and were not set" % (a["name"], newest, token))

    def record_fence(self):
        token = int(self.p.get("password_fence") or 0)
        if token <= 0 or self.check:
            return
        for a in self.accounts:
            ensure_file(self.fence_file(a), "%d\n" % token, 0o600, False)

    def need_passwords(self, parts):
        """Refuse unless every account names the secrets of ``parts`` (they are set)."""
        for a in self.accounts:
            if "ftp" in parts and not a["password"]:
                raise Refused("setting the passwords needs the new FTP password of %s" % a["name"])
            if "db" in parts and not a["db_password"]:
                raise Refused("setting the passwords needs the new database password of %s" % a["name"])
            if "mail" in parts and not all(b["password"] for b in a["mailboxes"]):
                raise Refused("setting the passwords needs the new password of every mailbox of %s"
                              % a["name"])

    def reset_password(self):
        parts = self.p["reset"]
        for a in self.accounts:
            pw = pwd.getpwnam(a["name"])
            a["uid"], a["gid"] = pw.pw_uid, pw.pw_gid
        self.need_passwords(parts)
        if "ftp" in parts:
            self.ftp(set_password=True)
        if "db" in parts:
            self.databases(set_password=True)
        if "mail" in parts:
            self.mail(set_password=True, maps=False)


def support_ok(version):
    if read_text(SUPPORT_STAMP) != version + "\n":
        return False
    main_cf = read_text("/etc/postfix/main.cf") or ""
    return ("BEGIN ANSIBLE MANAGED: hosting_account limits" in main_cf
            and os.path.isfile("/etc/dovecot/conf.d/95-hosting-account.conf")
            and os.path.isfile("/etc/pure-ftpd/conf/DontResolve")
            and names_current())


def names_current():
    """The account-name rule the node's scripts import is the one shipped with this module
    (a changed rule reinstalls the support even when nobody bumped its version)."""
    try:
        installed = load_source("hosting_names_installed", NAMES_FILE)
    except Exception:  # missing, unreadable or broken: install it again
        return False
    return (getattr(installed, "ACCOUNT_NAME_PATTERN", None) == ACCOUNT_NAME_PATTERN
            and getattr(installed, "RESERVED_ACCOUNT_NAMES", None) == RESERVED_ACCOUNT_NAMES)


def load_source(name, path):
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load_helper(path):
    return load_source("hosting_account_helper", path)


def main():
    box = dict(local=dict(type="str", required=True), password=dict(type="str", no_log=True),
               quota_mb=dict(type="int"))
    account = dict(
        name=dict(type="str", required=True),
        domains=dict(type="list", elements="str", required=True),
        plan=dict(type="str"),
        limits=dict(type="dict"),
        mailboxes=dict(type="list", elements="dict", options=box, default=[]),
        cron=dict(type="list", elements="dict", default=[]),
        password=dict(type="str", no_log=True),
        db_password=dict(type="str", no_log=True),
        suspended=dict(type="bool"),
        brand=dict(type="str", default=""),
    )
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", default="create",
                        choices=["create", "suspend", "unsuspend", "change_plan", "reset_password"]),
            accounts=dict(type="list", elements="dict", options=account, required=True),
            default_plan=dict(type="str", default="mega"),
            default_limits=dict(type="dict", default={}),
            reset=dict(type="list", elements="str", choices=["ftp", "db", "mail"], default=["ftp", "db", "mail"]),
            set_passwords=dict(type="bool", default=False),
            password_fence=dict(type="int", default=0),
            support_version=dict(type="str", default=""),
            node_root=dict(type="path", default="/srv/hosting"),
            accounts_group=dict(type="str", default="hosting"),
            php_conf_dir=dict(type="path", default="/etc/php/8.2/fpm/hosting"),
            php_memory_limit=dict(type="str", default="256M"),
            php_max_children=dict(type="int", default=5),
            io_device=dict(type="str", default="auto"),
            helper=dict(type="path", default="/usr/local/sbin/hosting-account"),
            suspended_dir=dict(type="path", default="/var/www/hosting-suspended"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["support_version"] and not support_ok(p["support_version"]):
        module.exit_json(changed=False, support_needed=True, accounts={}, reloaded=[])
    try:
        if not MEMORY_RE.match(p["php_memory_limit"]) or not 1 <= p["php_max_children"] <= 1000:
            raise Refused("Refused: bad PHP memory limit or max_children")
        if not p["node_root"].startswith("/srv/") or ".." in p["node_root"]:
            raise Refused("Refused: bad node root %r" % p["node_root"])
        if p["io_device"] == "auto":
            p["io_device"] = block_device_of(p["node_root"])
        if p["io_device"] and not DEVICE_RE.match(p["io_device"]):
            raise Refused("Refused: bad IO device %r" % p["io_device"])
        helper = load_helper(p["helper"])
        try:
            accounts = [normalize(raw, p, helper) for raw in p["accounts"]]
        except helper.Refused as exc:
            raise Refused("Refused: %s" % exc) from None
        names = [a["name"] for a in accounts]
        if len(set(names)) != len(names):
            raise Refused("Refused: an account appears twice in one call")
        owners = {}
        for a in accounts:
            for d in a["domains"]:
                if owners.setdefault(d, a["name"]) != a["name"]:
                    raise Refused("Refused: domain %s belongs to two accounts" % d)
    except Refused as exc:
        module.fail_json(msg=str(exc), support_needed=False, accounts={}, reloaded=[])
    work = Converge(module, helper, accounts)
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converge (or helper run) at a time on a node
        try:
            work.converge(p["action"])
        except (Refused, helper.Refused) as exc:
            module.fail_json(msg=str(exc), support_needed=False, reloaded=work.reloaded,
                             accounts={a["name"]: a["changed"] for a in accounts})
        except (OSError, RuntimeError, KeyError) as exc:
            module.fail_json(msg="%s: %s" % (type(exc).__name__, exc), support_needed=False,
                             reloaded=work.reloaded, accounts={a["name"]: a["changed"] for a in accounts})
        except Exception as exc:  # pymysql's errors: the helper imports pymysql lazily
            module.fail_json(msg="%s: %s" % (type(exc).__name__, exc), support_needed=False,
                             reloaded=work.reloaded, accounts={a["name"]: a["changed"] for a in accounts})
    changed = {a["name"]: a["changed"] for a in accounts}
    module.exit_json(changed=any(changed.values()), support_needed=False, accounts=changed,
                     reloaded=work.reloaded, timings=work.timings)


if __name__ == "__main__":
    main()
