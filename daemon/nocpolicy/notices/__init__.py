"""Notice delivery to a customer's fault contact: one outbox loop, one small class per channel.

See outbox.py for the loop and the ``Channel`` interface, publisher.py for the
``NoticePublisher`` Protocol the MQTT channel is handed (wired in app.py).
"""
