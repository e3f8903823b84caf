"""Hand-written cases: the smallest shape of each leak in the mutation catalogue.

They run first (as Hypothesis explicit examples) in the mutation tests and in the main
property, so the real platform is checked on them in every run, and every mutation is caught
within the default budget even when the random search of that run misses its shape. The
report says which mutations random search caught on its own.
"""

from __future__ import annotations

from ni.lang import (
    Case,
    Crash,
    CurLabel,
    Delete,
    Facets,
    Fail,
    Get,
    If,
    Invoke,
    InvokeAsync,
    Lit,
    Program,
    Put,
    Raise,
    Reg,
    Request,
    Return,
    Scan,
    SeedPut,
    SeedRecord,
    Send,
    Spin,
    StreamPut,
    WfStart,
)

_RET = Program((), None, Return(Lit(0)))
# t0/k0 is public (low); t0/k1 is the secret (high): 0 in world A, 1 in world B.
_SEED = (SeedPut("t0", "k0", "low", 7, 7), SeedPut("t0", "k1", "high", 0, 1))


def _case(f0: Program, label: str, f3: Program = _RET,
          records: tuple[SeedRecord, ...] = ()) -> Case:
    return Case({"f0": f0, "f1": _RET, "f2": _RET, "f3": f3}, _SEED,
                (Request("f0", label, 0, 0),), "low", False, records)


_READ_SECRET = (Raise("high", True), Get("t0", "k1", 0))

CORPUS = {
    # a low reader asks for the secret
    "low reads secret": _case(Program((Get("t0", "k1", 0),), None, Return(Reg(0))), "low"),
    # a high writer deletes a public key, or not, depending on the secret
    "secret-dependent delete": _case(
        Program((Get("t0", "k1", 0), If(0, (Delete("t0", "k0"),), ())), None, Return(Lit(0))),
        "high"),
    # raise, read the secret, send it on a low channel
    "send after raise": _case(
        Program((*_READ_SECRET, Send("web_low", Reg(0), 1, True)), None, Return(Lit(0))), "low"),
    # raise, read the secret, return it to the low invoker
    "return after raise": _case(Program(_READ_SECRET, None, Return(Reg(0))), "low"),
    # raise, read the secret, hand it to async work started "at the current label"
    "async after raise": _case(
        Program(_READ_SECRET, InvokeAsync("f3", Reg(0), None, True), Return(Lit(0))), "low",
        Program((Put("t0", "k2", Reg(0)),), None, Return(Lit(0)))),
    # read the secret at high, "raise" down to low, write it there
    "raise down": _case(
        Program((Get("t0", "k1", 0), Raise("low", True), Put("t0", "k2", Reg(0))), None,
                Return(Lit(0))), "high"),
    # a low write over a high facet (the write rule must remove it)
    "write over high facet": _case(Program((Put("t0", "k1", Lit(3)),), None, Return(Lit(0))),
                                   "low"),
    # a secret stream record (0 in world A, 1 in world B), then a low one in its partition:
    # the low record's batch must not carry the secret one to the low consumer
    "low record after secret record": _case(
        Program((StreamPut("p0", Lit(5), None, 1, True),), None, Return(Lit(0))), "low",
        records=(SeedRecord("p0", "high", 0, 1),)),
    # a high request starts an execution named n0 only if its event (secret: 0 in world A,
    # 1 in world B) is even; then a low one starts n0: the high one must not make it clash
    "workflow name taken above": Case(
        {"f0": Program((WfStart(Lit(1), "n0", 0, True),), None, Return(Reg(0))),
         "f1": Program((If(0, (WfStart(Lit(2), "n0", 1, True),), ()),), None, Return(Lit(0))),
         "f2": _RET, "f3": _RET},
        _SEED, (Request("f1", "high", 0, 1), Request("f0", "low", 0, 0)), "low", False),
    # a low start of an execution that rises to high and reads the workflow's secret there
    # (5 in world A, 7 in world B): 1 + 5 fails it, 1 + 7 does not; low must see it running
    "workflow outcome above its start": _case(
        Program((WfStart(Lit(1), None, 0, True),), None, Return(Lit(0))), "low"),
    # raise, read the secret, start an execution with it "at the current label"
    "workflow after raise": _case(
        Program((*_READ_SECRET, WfStart(Reg(0), None, 1, True)), None, Return(Lit(0))), "low"),
}


# Not a leak shape: one case that makes every operation and every outcome of the coverage
# check (test_noninterference.REQUIRED) happen in every run, so that the check does not
# depend on what the random search of that run happened to draw. f0 (at low) scans, lists
# facets, reads its label, invokes f2 (which spins past its timeout), sends an email, then
# starts two executions (one rises to high and fails, one succeeds where it started), then
# raises to high and is refused a low email and a low stream record, starts the workflow
# twice under one name (the second start fails: the name is taken), and ends by starting
# f3 asynchronously (which crashes, and is retried); f1 fails.
COVERAGE_CASE = Case(
    {
        "f0": Program((Scan("t0", 1), Facets("t0", "k0", 2), CurLabel(0),
                       Invoke("f2", Lit(1), 1, True, False),
                       Send("mail_low", Lit(2), 1, True),
                       WfStart(Lit(1), None, 1, True), WfStart(Lit(2), None, 1, True),
                       Raise("high", True),
                       Send("mail_low", Lit(3), 2, True),
                       StreamPut("p0", Lit(4), "low", 1, True),
                       WfStart(Lit(7), "n0", 1, True), WfStart(Lit(8), "n0", 2, True)),
                      InvokeAsync("f3", Lit(5), None, True), Return(Lit(0))),
        "f1": Program((), None, Fail(Lit(6))),
        "f2": Program((), None, Spin()),
        "f3": Program((), None, Crash()),
    },
    _SEED,
    (Request("f0", "low", 0, 0), Request("f1", "low", 0, 0)),
    "low",
    False,
)
