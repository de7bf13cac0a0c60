"""The transfer itself: network, strategies, source weights, LightningModule, callbacks, speed rules, auto."""
