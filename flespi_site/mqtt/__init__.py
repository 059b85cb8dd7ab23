"""MQTT: the topic grammar (``topics``), the access policy (``policy``) and the client (``client``)."""
