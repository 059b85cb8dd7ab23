"""The platform's MQTT broker (``server``), its packets (``codec``), routing (``routing``),
persistence (``store``) and WebSocket transport (``websocket``). docs/mqtt.md."""
