"""Clients, server strategies, aggregation and the in-process round loop."""
