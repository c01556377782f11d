"""Secure aggregation: the shared fixed-point encoding, the SecAgg/SecAgg+ protocol as message-in/message-out state
machines, and the cryptographic building blocks they take from ``cryptography`` and ``pycryptodome``."""
