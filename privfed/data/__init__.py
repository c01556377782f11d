"""Offline datasets, tokenisation and client partitioning."""
