"""Fair-use metering: samples of each VPS's cumulative usage counters (issue 14 item 6).

The beat (``provisioner.vps_usage``) reads every live machine's counters from its VPS
host (``NspawnDriver.usage``) every ``vps_usage_minutes`` and stores one row here per
machine and reading. The counters are cumulative since the machine last started (a
restart sets them back to zero); ``provisioner vps usage`` turns consecutive rows into
averages (pipeline/usecases/vps_usage.py). A stopped machine's row has no counters.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from provisioner.store.models import Base, UtcDateTime


class VpsUsageSample(Base):
    __tablename__ = "vps_usage_samples"
    __table_args__ = (Index("ix_vps_usage_samples_vps_taken", "vps_id", "taken_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps_machines.id"))
    taken_at: Mapped[datetime] = mapped_column(UtcDateTime())
    running: Mapped[bool] = mapped_column(Boolean)
    cpu_ns: Mapped[int | None] = mapped_column(BigInteger)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    io_read_bytes: Mapped[int | None] = mapped_column(BigInteger)
    io_write_bytes: Mapped[int | None] = mapped_column(BigInteger)
    io_read_ops: Mapped[int | None] = mapped_column(BigInteger)
    io_write_ops: Mapped[int | None] = mapped_column(BigInteger)
