"""A Python client that is part of a distributed trace: it sends its span context as a W3C
`traceparent` header (what any OpenTelemetry SDK's gRPC instrumentation sends), so isogear's
spans of each call become children of the client's span.

Run: python3 traced.py ADDRESS STUBS_DIR API_KEY
Prints one JSON object: the trace and span ids it sent, and the ids isogear answered with.
"""
import json
import secrets
import sys

import grpc
from google.protobuf import json_format, struct_pb2

address, stubs, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stubs)
from isogear.v1 import gears_pb2, gears_pb2_grpc  # noqa: E402


def span_context():
    """A new client span: its trace id, its span id and the metadata that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (
        ("authorization", "Bearer " + api_key),
        ("traceparent", "00-%s-%s-01" % (trace_id, span_id)),
        ("tracestate", "py=1"),
    )
    return trace_id, span_id, metadata


def value(obj):
    v = struct_pb2.Value()
    json_format.ParseDict(obj, v)
    return v


channel = grpc.insecure_channel(address)
gears = gears_pb2_grpc.GearsServiceStub(channel)
out = {}

# Execute: a script that registers three handlers of one trigger
trace_id, span_id, md = span_context()
res = gears.Execute(
    gears_pb2.ExecuteRequest(
        source='for (const n of [1, 2, 3]) gears.register("py.traced", (p) => p * n); export default "ok";',
        mode=gears_pb2.ISOLATION_MODE_ISOLATE,
    ),
    metadata=md,
)
out["execute"] = {
    "trace_id": trace_id,
    "span_id": span_id,
    "execution_id": res.execution_id,
    "interpreter_id": res.interpreter_id,
    "registrations": [r.id for r in res.registrations],
}

# Trigger: fans out to the three handlers
trace_id, span_id, md = span_context()
fired = gears.Trigger(gears_pb2.TriggerRequest(trigger="py.traced", payload=value(7)), metadata=md)
out["trigger"] = {
    "trace_id": trace_id,
    "span_id": span_id,
    "results": [json_format.MessageToDict(r.result) for r in fired.results],
    "execution_ids": [r.execution_id for r in fired.results],
}

_, _, md = span_context()
gears.Release(gears_pb2.ReleaseRequest(interpreter_id=res.interpreter_id), metadata=md)
print(json.dumps(out))
