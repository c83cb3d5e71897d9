"""The router worker: a pure batch core, control-topic state, and the faust app around them."""
