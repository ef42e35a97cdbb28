"""MQTT delivery of notices (the fault contact's optional ``mqtt_topic``) through a ``NoticePublisher``.

Each notice row for a contact with an ``mqtt_topic`` gets one ``mw_mqtt`` row.
Delivery publishes the same JSON document as the webhook body (with
``message_id`` and the iCalendar text) with QoS 1, not retained, to the topic;
the row is ``delivered`` once the broker acknowledged it (PUBACK). Without
``--mqtt``, or while the bridge is not connected, the attempt counts and the row
stays ``pending`` with the outbox backoff (``failed`` after MAX_ATTEMPTS); when
the bridge (re)connects, waiting rows are tried at once. At-least-once: a crash
or a lost PUBACK repeats the publish with the same ``message_id``, which
consumers use to de-duplicate. ``MqttChannel`` is this channel of the shared
outbox loop; app.py hands it the publisher (``set_publisher``) and the publisher
calls ``connected`` when its link comes up. Other notice sources (suspension letters) use the
same class on their own delivery table with their own document (``table``, ``body``).
"""

from __future__ import annotations

import json
import logging

from ..notices.outbox import Attempt, RowChannel, Table, no_session
from ..notices.publisher import NoticePublisher
from .webhooks import notice_body, payload

log = logging.getLogger(__name__)

RESULTS = ("delivered", "retry", "failed")


def body(data) -> bytes:
    """The published bytes (pure): the webhook JSON document."""
    return json.dumps(payload(data), ensure_ascii=False).encode()


class MqttChannel(RowChannel):
    name = "mqtt"
    table = Table("mw_mqtt", "notice_id", "topic", "delivered", "delivered_at",
                  "SELECT mw_mqtt.*, o.payload, o.kind, o.message_id FROM mw_mqtt "
                  "JOIN mw_outbox o ON o.id=mw_mqtt.notice_id WHERE")

    def __init__(self, *, table: Table | None = None, body=None):
        self.publisher: NoticePublisher | None = None
        if table is not None:
            self.table = table            # rows of another notice source (with its payload)
        self.body = body or notice_body   # row -> the JSON document published

    def target(self, contact) -> str | None:
        return contact.mqtt_topic

    def session(self):
        return no_session(self.deliver)

    async def deliver(self, row: dict) -> Attempt:
        if self.publisher is None:
            return Attempt(False, True, "no MQTT bridge in this daemon")
        doc = json.dumps(self.body(row), ensure_ascii=False).encode()
        ok, error = await self.publisher.publish_notice(row["topic"], doc)
        return Attempt(ok, True, error)
