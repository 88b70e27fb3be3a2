"""One router per concern: act, health, metrics, websocket."""
