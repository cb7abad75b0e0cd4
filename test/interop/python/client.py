"""A short isogear client, written the way a Python user would write one.

Stubs come from proto/ at run time:
    python3 -m grpc_tools.protoc -Iproto --python_out=OUT --grpc_python_out=OUT proto/isogear/v1/gears.proto
Run: python3 client.py ADDRESS STUBS_DIR API_KEY
Prints one JSON object with what it saw; exits non-zero if anything is not as expected.
"""
import hashlib
import json
import sys
import time

import grpc
from google.protobuf import json_format, struct_pb2

address, stubs, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stubs)
from isogear.v1 import gears_pb2, gears_pb2_grpc  # noqa: E402

SHARED = gears_pb2.ISOLATION_MODE_SHARED
AUTH = (("authorization", "Bearer " + api_key),)


def to_value(obj):
    """Any JSON-like Python value as a google.protobuf.Value."""
    v = struct_pb2.Value()
    json_format.ParseDict(obj, v)
    return v


def from_value(v):
    return json_format.MessageToDict(v)


def status_of(call):
    """Runs a call that must fail; returns its status name and the isogear-limit trailer."""
    try:
        call()
    except grpc.RpcError as err:
        trailers = dict(err.trailing_metadata() or ())
        return {"code": err.code().name, "details": err.details(), "limit": trailers.get("isogear-limit")}
    raise AssertionError("the call succeeded")


channel = grpc.insecure_channel(address)
gears = gears_pb2_grpc.GearsServiceStub(channel)
seen = {}

# Execute with structured arguments and a structured result
res = gears.Execute(
    gears_pb2.ExecuteRequest(
        source="export default (a) => ({ total: a.items.reduce((s, x) => s + x.price * x.qty, 0), names: a.items.map((x) => x.name), vip: !a.customer.new })",
        args=to_value({"customer": {"new": False}, "items": [{"name": "tea", "price": 2.5, "qty": 2}, {"name": "cake", "price": 4, "qty": 1}]}),
        mode=SHARED,
    ),
    metadata=AUTH,
)
assert res.outcome == gears_pb2.OUTCOME_SUCCEEDED, res
seen["execute"] = from_value(res.result)

# Register a handler, Trigger it, List it, Release it
reg = gears.Register(
    gears_pb2.RegisterRequest(trigger="py.greet", source="export default (p) => `hello ${p.name}`", mode=SHARED, description="from python"),
    metadata=AUTH,
)
reg_id = reg.registration.id
fired = gears.Trigger(gears_pb2.TriggerRequest(trigger="py.greet", payload=to_value({"name": "python"})), metadata=AUTH)
seen["trigger"] = [from_value(r.result) for r in fired.results]
listed = gears.ListRegistrations(gears_pb2.ListRegistrationsRequest(trigger="py.greet"), metadata=AUTH)
seen["listed"] = [{"id": r.id, "description": r.description, "runs": r.stats.runs} for r in listed.registrations]
interps = gears.ListInterpreters(gears_pb2.ListInterpretersRequest(), metadata=AUTH)
seen["interpreters"] = len(interps.interpreters)
# Pause it: Trigger skips it; resume it: it runs again
paused = gears.PauseRegistrations(gears_pb2.PauseRegistrationsRequest(trigger="py.greet"), metadata=AUTH)
skipped = gears.Trigger(gears_pb2.TriggerRequest(trigger="py.greet", payload=to_value({"name": "nobody"})), metadata=AUTH)
flag = gears.ListRegistrations(gears_pb2.ListRegistrationsRequest(trigger="py.greet"), metadata=AUTH).registrations[0].paused
resumed = gears.ResumeRegistrations(gears_pb2.ResumeRegistrationsRequest(registration_id=reg_id), metadata=AUTH)
again = gears.Trigger(gears_pb2.TriggerRequest(trigger="py.greet", payload=to_value({"name": "again"})), metadata=AUTH)
seen["pause"] = {
    "paused": list(paused.registration_ids) == [reg_id],
    "skipped": len(skipped.results),
    "flag": flag,
    "resumed": list(resumed.registration_ids) == [reg_id],
    "again": [from_value(r.result) for r in again.results],
    "two_selectors": status_of(lambda: gears.PauseRegistrations(gears_pb2.PauseRegistrationsRequest(registration_id=reg_id, trigger="py.greet"), metadata=AUTH)),
}
released = gears.Release(gears_pb2.ReleaseRequest(registration_id=reg_id), metadata=AUTH)
seen["released"] = list(released.released_registration_ids) == [reg_id]

# TypeScript from Python: types stripped; a failure points at the TypeScript line
typed = gears.Execute(
    gears_pb2.ExecuteRequest(
        source="interface A { n: number }\nexport default (a: A): number => {\n  if (a.n < 0) throw new RangeError('negative');\n  return a.n * 2;\n};\n",
        args=to_value({"n": 21}),
        mode=SHARED,
        language=gears_pb2.LANGUAGE_TYPESCRIPT,
    ),
    metadata=AUTH,
)
typed_err = gears.Execute(
    gears_pb2.ExecuteRequest(
        source="interface A { n: number }\nexport default (a: A): number => {\n  if (a.n < 0) throw new RangeError('negative');\n  return a.n * 2;\n};\n",
        args=to_value({"n": -1}),
        mode=SHARED,
        language=gears_pb2.LANGUAGE_TYPESCRIPT,
    ),
    metadata=AUTH,
)
seen["typescript"] = {"result": from_value(typed.result), "error": typed_err.error.name, "line3": "main.ts:3:" in typed_err.error.stack}

# Versions: a named interpreter upgraded once, then rolled back to its first version
v1_source = 'gears.register("py.ver", () => "v1");'
gears.Execute(gears_pb2.ExecuteRequest(source=v1_source, name="py-svc", mode=SHARED), metadata=AUTH)
gears.Execute(gears_pb2.ExecuteRequest(source='gears.register("py.ver", () => "v2");', name="py-svc", replace=True, mode=SHARED), metadata=AUTH)
listed_versions = gears.ListVersions(gears_pb2.ListVersionsRequest(name="py-svc"), metadata=AUTH)
back = gears.Rollback(gears_pb2.RollbackRequest(name="py-svc", version=1), metadata=AUTH)
after = gears.ListVersions(gears_pb2.ListVersionsRequest(name="py-svc"), metadata=AUTH)
ran = gears.Trigger(gears_pb2.TriggerRequest(trigger="py.ver"), metadata=AUTH)
seen["versions"] = {
    "listed": [[v.version, v.current, v.interpreter_id != ""] for v in listed_versions.versions],
    "sha": listed_versions.versions[0].source_sha256 == hashlib.sha256(v1_source.encode()).hexdigest(),
    "bytes": listed_versions.versions[0].source_bytes,
    "created": listed_versions.versions[0].created_at.ToMilliseconds() > 0,
    "rollback": {"outcome": gears_pb2.Outcome.Name(back.outcome), "result": from_value(back.result), "name": back.interpreter.name},
    "after": [[v.version, v.current, v.rolled_back_from] for v in after.versions],
    "ran": [from_value(r.result) for r in ran.results],
    "errors": {
        "version_0": status_of(lambda: gears.Rollback(gears_pb2.RollbackRequest(name="py-svc", version=0), metadata=AUTH)),
        "no_name": status_of(lambda: gears.ListVersions(gears_pb2.ListVersionsRequest(), metadata=AUTH)),
        "unknown_version": status_of(lambda: gears.Rollback(gears_pb2.RollbackRequest(name="py-svc", version=9), metadata=AUTH)),
        "unknown_name": status_of(lambda: gears.ListVersions(gears_pb2.ListVersionsRequest(name="py-none"), metadata=AUTH)),
    },
}
gears.Release(gears_pb2.ReleaseRequest(interpreter_id=back.interpreter_id), metadata=AUTH)

# Three error codes, as a Python user meets them
seen["errors"] = {
    "no_key": status_of(lambda: gears.ListInterpreters(gears_pb2.ListInterpretersRequest())),
    "unknown_interpreter": status_of(lambda: gears.GetInterpreter(gears_pb2.GetInterpreterRequest(interpreter_id="itp_nope"), metadata=AUTH)),
    "empty_source": status_of(lambda: gears.Execute(gears_pb2.ExecuteRequest(source=""), metadata=AUTH)),
}
held = [gears.Register(gears_pb2.RegisterRequest(trigger="py.fill", source="export default () => 1", mode=SHARED), metadata=AUTH) for _ in range(2)]
seen["errors"]["quota"] = status_of(lambda: gears.Execute(gears_pb2.ExecuteRequest(source="export default 1", mode=SHARED), metadata=AUTH))
for h in held:
    gears.Release(gears_pb2.ReleaseRequest(registration_id=h.registration.id), metadata=AUTH)

# Start a run in the background, then wait until it is DONE (each WaitExecution answers within timeout_ms)
started = gears.StartExecute(
    gears_pb2.ExecuteRequest(source="export default (a) => a.n * 2", args=to_value({"n": 21}), mode=SHARED),
    metadata=AUTH,
)
execution = started
while execution.state != gears_pb2.EXECUTION_STATE_DONE:
    execution = gears.WaitExecution(gears_pb2.WaitExecutionRequest(execution_id=started.id, timeout_ms=5000), metadata=AUTH)
assert execution.execute_response.outcome == gears_pb2.OUTCOME_SUCCEEDED, execution
result = from_value(execution.execute_response.result)  # 42

# A DONE background execution is kept for a while: GetExecution and ListExecutions see it
got = gears.GetExecution(gears_pb2.GetExecutionRequest(execution_id=started.id), metadata=AUTH)
done = gears.ListExecutions(gears_pb2.ListExecutionsRequest(state=gears_pb2.EXECUTION_STATE_DONE), metadata=AUTH)
seen["start_execute"] = {
    "started": gears_pb2.ExecutionState.Name(started.state),
    "kind": gears_pb2.ExecutionKind.Name(execution.kind),
    "background": execution.background,
    "response": execution.WhichOneof("response"),
    "outcome": gears_pb2.Outcome.Name(execution.execute_response.outcome),
    "result": result,
    "same_id": execution.execute_response.execution_id == started.id,
    "ended": execution.HasField("ended_at") and execution.ended_at.ToMilliseconds() >= execution.started_at.ToMilliseconds() > 0,
    "get": {"state": gears_pb2.ExecutionState.Name(got.state), "result": from_value(got.execute_response.result)},
    "listed": started.id in [e.id for e in done.executions],
    "listed_states": sorted({gears_pb2.ExecutionState.Name(e.state) for e in done.executions}),
}


def wait_done(execution_id):
    """WaitExecution until DONE (each wait answers after at most timeout_ms)."""
    e = gears.WaitExecution(gears_pb2.WaitExecutionRequest(execution_id=execution_id, timeout_ms=5000), metadata=AUTH)
    while e.state != gears_pb2.EXECUTION_STATE_DONE:
        e = gears.WaitExecution(gears_pb2.WaitExecutionRequest(execution_id=execution_id, timeout_ms=5000), metadata=AUTH)
    return e


# StartTrigger: the fan-out runs in the background; its TriggerResponse is kept once DONE
bg = gears.Register(gears_pb2.RegisterRequest(trigger="py.bg", source="export default (p) => p.n + 1", mode=SHARED), metadata=AUTH)
fan_out = gears.StartTrigger(gears_pb2.TriggerRequest(trigger="py.bg", payload=to_value({"n": 41})), metadata=AUTH)
fired = wait_done(fan_out.id)
seen["start_trigger"] = {
    "kind": gears_pb2.ExecutionKind.Name(fired.kind),
    "trigger": fired.trigger,
    "response": fired.WhichOneof("response"),
    "results": [
        {"registration": r.registration_id == bg.registration.id, "outcome": gears_pb2.Outcome.Name(r.outcome), "result": from_value(r.result)}
        for r in fired.trigger_response.results
    ],
}
gears.Release(gears_pb2.ReleaseRequest(registration_id=bg.registration.id), metadata=AUTH)

# CancelExecution stops a long run: it ends OUTCOME_ABORTED long before its time limit (in isolate
# mode its isolate is disposed at once; a shared isolate would spin on until the limit)
spin = gears.StartExecute(
    gears_pb2.ExecuteRequest(source="for (;;) {}", mode=gears_pb2.ISOLATION_MODE_ISOLATE, limits=gears_pb2.Limits(timeout_ms=30000)),
    metadata=AUTH,
)
running = spin
for _ in range(500):
    if running.state == gears_pb2.EXECUTION_STATE_RUNNING and running.interpreter_id:
        break
    time.sleep(0.01)
    running = gears.GetExecution(gears_pb2.GetExecutionRequest(execution_id=spin.id), metadata=AUTH)
time.sleep(0.3)  # well inside the loop by now
listed_running = gears.ListExecutions(gears_pb2.ListExecutionsRequest(state=gears_pb2.EXECUTION_STATE_RUNNING), metadata=AUTH)
cancelled = gears.CancelExecution(gears_pb2.CancelExecutionRequest(execution_id=spin.id), metadata=AUTH)
stopped = wait_done(spin.id)
seen["cancel"] = {
    "before": gears_pb2.ExecutionState.Name(running.state),
    "listed_running": spin.id in [e.id for e in listed_running.executions],
    "answered": cancelled.id == spin.id,
    "outcome": gears_pb2.Outcome.Name(stopped.execute_response.outcome),
    "error": stopped.execute_response.error.name + ": " + stopped.execute_response.error.message,
    "ms": stopped.ended_at.ToMilliseconds() - stopped.started_at.ToMilliseconds(),
}

# Execution ids: malformed is INVALID_ARGUMENT, well-formed but unknown is NOT_FOUND
unknown = "exe_" + "0123456789abcdef0123"
seen["execution_errors"] = {
    "malformed_get": status_of(lambda: gears.GetExecution(gears_pb2.GetExecutionRequest(execution_id="nope"), metadata=AUTH)),
    "malformed_wait": status_of(lambda: gears.WaitExecution(gears_pb2.WaitExecutionRequest(execution_id="nope"), metadata=AUTH)),
    "malformed_cancel": status_of(lambda: gears.CancelExecution(gears_pb2.CancelExecutionRequest(execution_id="nope"), metadata=AUTH)),
    "unknown_get": status_of(lambda: gears.GetExecution(gears_pb2.GetExecutionRequest(execution_id=unknown), metadata=AUTH)),
    "unknown_wait": status_of(lambda: gears.WaitExecution(gears_pb2.WaitExecutionRequest(execution_id=unknown), metadata=AUTH)),
    "unknown_cancel": status_of(lambda: gears.CancelExecution(gears_pb2.CancelExecutionRequest(execution_id=unknown), metadata=AUTH)),
}

channel.close()
print(json.dumps(seen))
