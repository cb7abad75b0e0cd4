"""A short isogear client, written the way a Python user would write one.

Stubs come from proto/ at run time:
    python3 -m grpc_tools.protoc -Iproto --python_out=OUT --grpc_python_out=OUT proto/isogear/v1/gears.proto
Run: python3 client.py ADDRESS STUBS_DIR API_KEY
Prints one JSON object with what it saw; exits non-zero if anything is not as expected.
"""
import json
import sys

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
released = gears.Release(gears_pb2.ReleaseRequest(registration_id=reg_id), metadata=AUTH)
seen["released"] = list(released.released_registration_ids) == [reg_id]

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

channel.close()
print(json.dumps(seen))
