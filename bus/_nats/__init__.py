"""The NATS fast lane: the only code that speaks the NATS wire protocol and JetStream's
client protocol on nats-py's own parser and buffers."""
