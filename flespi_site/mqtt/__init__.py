"""MQTT: the topic grammar (``topics``), the access policy (``policy``), the paho clients
(``client``) and the outbox relay's QoS 1 publisher (``publisher``)."""
