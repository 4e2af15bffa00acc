"""The lifecycle clock: renewal proformas, shutdown on expiry, staged deletion.

``sweep(today)`` is run daily by the beat (``provisioner.sweep``) and by ops
(``provisioner sweep [--now DATE] [--dry-run]``). It reads only services whose
``clock_on`` (indexed) is today or earlier, so its cost grows with what is due, not
with all services. For each it works out what the domain's schedule says is due
(``domain.lifecycle.term_schedule``), does the database part in the sweep's own
transaction, writes the side effects as journal steps, and moves ``clock_on`` to the
service's next date:

* renewal: a renewal order and proforma (no discount code; priced as a renewal), due
  on the last day the renewal can be done; its ``notify.proforma`` step e-mails it.
  UNIQUE(service, term) in ``renewals`` means a term is billed once, whatever runs twice.
* reminder: ``clock.reminder`` e-mails the open renewal proforma again (once per
  reminder day; a paid proforma gets no reminder).
* shutdown (the day after expiry, proforma still unpaid): the reactivation fee of the
  brand is added to the open renewal proforma (the same reference keeps working; an
  earlier payment of the old amount counts towards it), the service becomes
  ``expired``, and ``clock.shutdown`` suspends it on its node (the "site disabled"
  page) and tells the customer. A proforma paid in the meantime stops the shutdown.
* delete_data (stage 1): the renewal proforma is cancelled (no reactivation after
  this), ``clock.delete_data`` removes the account from its node after a last backup
  and records what it removed; the service becomes ``deleted``.
* purge_backups (stage 2, only after stage 1 is done): ``clock.purge_backups`` purges
  the backups and records what it removed; the service becomes ``purged``.

A paid renewal proforma plans ``service.renew`` (pipeline/plan.py): the term is
extended from the ORIGINAL expiry, also when paid late, and a service shut down for
expiry is reactivated (unsuspended on its node).

No step ever runs before its date: each stage step checks its ``due_on`` against the
clock it runs with. Ops can put a service on hold (``hold``): its clock stops and its
pending clock steps are withdrawn until ``release``.

The package: `sweeper` (what is due, the beat's daily run and ``run_day`` for ops and
tests), `batch` (one batch's reads and writes), `renewals` (renewal proformas and the
reactivation fee), `stages` (the step handlers) and `hold` (ops' hold and the stage
records). The names below are its public surface.
"""

from provisioner.pipeline.capabilities.lifecycle import lapse, stages
from provisioner.pipeline.capabilities.lifecycle.hold import hold, release, stage_records
from provisioner.pipeline.capabilities.lifecycle.stages import PLANNERS
from provisioner.pipeline.capabilities.lifecycle.sweeper import (
    Action,
    SweepReport,
    run_day,
    step_key,
    sweep,
)
from provisioner.pipeline.engine.runner import Handler

HANDLERS: dict[str, Handler] = {**stages.HANDLERS, **lapse.HANDLERS}  # lapse: unpaid new orders (issue 17)

__all__ = ["HANDLERS", "PLANNERS", "Action", "SweepReport", "hold", "release", "run_day",
           "stage_records", "step_key", "sweep"]
