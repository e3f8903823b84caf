"""The trusted monitor: per-invocation labels, guest calls, output checks, audit (TCB)."""

from trapeze.monitor.audit import AuditEntry, AuditSink, MemoryAudit
from trapeze.monitor.invocation import Invocation
from trapeze.monitor.monitor import Channel, Declassifier, Dispatcher, Monitor

__all__ = [
    "AuditEntry",
    "AuditSink",
    "Channel",
    "Declassifier",
    "Dispatcher",
    "Invocation",
    "MemoryAudit",
    "Monitor",
]
