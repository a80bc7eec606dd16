#!/usr/bin/env python3
"""Subscribe to CLS domain events and print each one as a JSON line.

CLS publishes every domain event to the topic exchange ``<ns>.events`` (``<ns>`` is the
deployment's ``CLS_NAMESPACE``), with the event type as routing key and the body as one
MessagePack map (see docs/asyncapi.yaml). This subscriber declares its own queue, binds it to
that exchange and, for each event, writes one JSON object to stdout:

    {"type": ..., "id": ..., "routing_key": ..., "properties": {...}, "payload": {...}}

``payload`` is the whole decoded message (the envelope: id, type, schema_version, occurred_at,
brand_id, aggregate_id, aggregate_version, correlation_id, causation_id, data); ``properties``
are the AMQP properties it came with. Diagnostics go to stderr.

Delivery is at least once: the subscriber skips an event id it has already printed (within the
last --dedupe-window events). It acks a message after printing it; a message it cannot decode,
or of a schema version it does not know, is rejected without requeue.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys

import msgpack
import pika

# The major version of the event envelope this subscriber understands (docs/asyncapi.yaml).
SCHEMA_VERSION = 1
CONTENT_TYPE = "application/msgpack"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("CLS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        help="the broker (default: $CLS_AMQP_URL, else the local default)",
    )
    p.add_argument(
        "--namespace",
        default=os.environ.get("CLS_NAMESPACE", "cls"),
        help="the CLS namespace: events come from <namespace>.events (default: $CLS_NAMESPACE, else cls)",
    )
    p.add_argument(
        "--queue",
        default="",
        help="a durable named queue that keeps events while this subscriber is down "
        "(default: a server-named exclusive queue, deleted when the subscriber disconnects)",
    )
    p.add_argument(
        "--binding",
        action="append",
        dest="bindings",
        metavar="PATTERN",
        help="a routing-key pattern to bind, e.g. 'license.*' or 'activation.#' (repeatable; default '#': every event)",
    )
    p.add_argument("--prefetch", type=int, default=100, help="unacked messages in flight (default 100)")
    p.add_argument("--dedupe-window", type=int, default=100_000, help="event ids remembered for deduplication")
    args = p.parse_args(argv)
    args.bindings = args.bindings or ["#"]
    return args


class Seen:
    """The last N event ids, to drop redeliveries (at-least-once delivery)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, event_id: str) -> bool:
        """Remembers the id; False if it was already there."""
        if event_id in self.ids:
            return False
        self.ids[event_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True


def properties_of(props: pika.BasicProperties) -> dict:
    """The AMQP properties that are set, with their AMQP names."""
    fields = {
        "message_id": props.message_id,
        "type": props.type,
        "content_type": props.content_type,
        "content_encoding": props.content_encoding,
        "delivery_mode": props.delivery_mode,
        "timestamp": props.timestamp,
        "correlation_id": props.correlation_id,
        "headers": props.headers,
    }
    return {k: v for k, v in fields.items() if v is not None}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    exchange = f"{args.namespace}.events"
    seen = Seen(args.dedupe_window)

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    if args.queue:
        # Durable and shared by every run of this subscriber: events wait for it.
        queue = channel.queue_declare(queue=args.queue, durable=True).method.queue
    else:
        queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    for pattern in args.bindings:
        # Fails with NOT_FOUND when the exchange does not exist yet (run `cls topology` or `cls up`).
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=pattern)
    channel.basic_qos(prefetch_count=args.prefetch)

    def on_message(ch, method, props, body: bytes) -> None:
        if props.content_type != CONTENT_TYPE:
            log(f"rejecting a message with content type {props.content_type!r}")
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        try:
            # raw=False: MessagePack strings become str. Every event is a map with string keys.
            event = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException) as error:
            log(f"rejecting an undecodable message {props.message_id}: {error}")
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        if not isinstance(event, dict) or event.get("schema_version") != SCHEMA_VERSION:
            version = event.get("schema_version") if isinstance(event, dict) else None
            log(f"rejecting message {props.message_id}: not a schema version {SCHEMA_VERSION} event (found {version!r})")
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        if seen.add(event["id"]):
            line = {
                "type": event["type"],
                "id": event["id"],
                "routing_key": method.routing_key,
                "properties": properties_of(props),
                "payload": event,
            }
            print(json.dumps(line, default=repr), flush=True)
        else:
            log(f"skipping duplicate event {event['id']} ({event['type']})")
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue=queue, on_message_callback=on_message)
    log(f"subscribed: queue={queue} exchange={exchange} bindings={','.join(args.bindings)}")
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        # SIGINT, or SIGTERM (below): unacked messages go back to the queue.
        log("stopping")
    finally:
        try:
            connection.close()
        except pika.exceptions.AMQPError:
            pass
    return 0


def interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)
    try:
        sys.exit(main(sys.argv[1:]))
    except pika.exceptions.AMQPError as error:
        log(f"AMQP error: {error!r}")
        sys.exit(1)
