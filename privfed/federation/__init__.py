"""Clients, server strategies, the server view and the in-process round loop (aggregation: privfed.aggregation)."""
