"""A small agent run recorded by the OpenTelemetry Python SDK, shipped as the
Collector's kafka exporter ships it: a producer that is not ours.

Usage: otel_agent.py BOOTSTRAP PROTO_TOPIC JSON_TOPIC SECRET

The spans follow the GenAI semantic conventions: an invoke_agent span, two
chat (model) calls, four execute_tool calls (one failing, one whose
arguments carry SECRET), an MCP tools/call, and a tool span without a tool
name. They are encoded with the SDK's own OTLP encoder
(opentelemetry-exporter-otlp-proto-common) and produced with kafka-python:
once as otlp_proto to PROTO_TOPIC, once as OTLP JSON to JSON_TOPIC, each
followed by a message that is not OTLP. Prints a JSON summary of what it
recorded.
"""
import base64
import json
import sys

from google.protobuf import json_format
from kafka import KafkaProducer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

bootstrap, proto_topic, json_topic, secret = sys.argv[1:5]

exporter = InMemorySpanExporter()
provider = TracerProvider(
    resource=Resource.create(
        {
            "service.name": "support-bot-svc",
            "deployment.environment.name": "production",
            "tenant.id": "acme",
        }
    )
)
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("example.agent", "1.0")

AGENT = {"gen_ai.agent.id": "support-bot", "gen_ai.agent.name": "Support bot"}
CONVERSATION = {"gen_ai.conversation.id": "conv-42"}


def tool_call(name, call_id, arguments, result=None, error=None):
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.arguments": json.dumps(arguments),
        **AGENT,
        **CONVERSATION,
    }
    if name is not None:
        attributes["gen_ai.tool.name"] = name
    with tracer.start_as_current_span(f"execute_tool {name or ''}".strip(), attributes=attributes) as span:
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, "the tool failed"))
        elif result is not None:
            span.set_attribute("gen_ai.tool.call.result", json.dumps(result))


def model_call():
    with tracer.start_as_current_span(
        "chat gpt-4o",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 812,
            "gen_ai.usage.output_tokens": 64,
        },
    ):
        pass


with tracer.start_as_current_span(
    "invoke_agent Support bot",
    attributes={"gen_ai.operation.name": "invoke_agent", **AGENT, **CONVERSATION},
):
    model_call()
    tool_call("search_kb", "call-1", {"query": "refund policy"}, result={"hits": 3})
    tool_call("lookup_order", "call-2", {"order_id": 991, "api_key": secret}, result={"status": "paid"})
    tool_call("create_refund", "call-3", {"order_id": 991, "amount_cents": 4200}, error="payment_gateway_timeout")
    with tracer.start_as_current_span(
        "tools/call github.create_issue",
        attributes={
            "mcp.method.name": "tools/call",
            "gen_ai.tool.name": "github.create_issue",
            "gen_ai.tool.call.arguments": json.dumps({"title": "refund failed"}),
            **CONVERSATION,
        },
    ):
        pass
    tool_call(None, "call-5", {"x": 1})
    model_call()

spans = exporter.get_finished_spans()
request = encode_spans(spans)
proto_bytes = request.SerializeToString()


def hex_ids(value):
    """OTLP JSON writes trace and span ids as hex, where protobuf's own JSON
    mapping writes base64 (the OTLP specification's one exception)."""
    if isinstance(value, dict):
        return {
            k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and v else hex_ids(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hex_ids(v) for v in value]
    return value


json_bytes = json.dumps(
    hex_ids(json_format.MessageToDict(request, use_integers_for_enums=True))
).encode()

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
producer.send(proto_topic, key=b"acme", value=proto_bytes)
producer.send(proto_topic, key=b"acme", value=b"\x0a\xff\xff\xff\x0f not OTLP")
producer.send(json_topic, key=b"acme", value=json_bytes)
producer.send(json_topic, key=b"acme", value=b'{"resourceSpans": "not a list"}')
producer.flush(timeout=60)
producer.close()

kinds = {}
for s in spans:
    op = s.attributes.get("gen_ai.operation.name") or s.attributes.get("mcp.method.name")
    kinds[op] = kinds.get(op, 0) + 1
print(
    json.dumps(
        {
            "spans": len(spans),
            "kinds": kinds,
            "span_ids": sorted(f"{s.context.trace_id:032x}/{s.context.span_id:016x}" for s in spans),
            "proto_bytes": len(proto_bytes),
            "json_bytes": len(json_bytes),
        }
    )
)
