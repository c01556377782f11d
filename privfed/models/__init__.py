"""Offline model sources and the four training regimes."""
