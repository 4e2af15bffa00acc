"""The capabilities: one module per kind of line (and the clock), each listing its step
handlers (``HANDLERS``) and line planners (``PLANNERS``). Importing this package
imports and registers nothing: the composition root (`provisioner.bootstrap`) names
the modules and gathers their lists.

* billing: invoice issuance, the proforma/payment/invoice e-mails, activation
* hosting: accounts on hosting nodes, the access-data link
* dns_tls: DNS zones (RFC 2136) and certificates (ACME)
* domains: registration, transfer, renewal and name servers at the registry (EPP)
* lifecycle: the clock's steps: reminders, shutdown, staged deletion, renewal
* quota (no steps: a daily check) and placement (shared by hosting, DNS and the clock)
"""

