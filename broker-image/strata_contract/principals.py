"""Principals both planes name."""

ANONYMOUS = "User:ANONYMOUS"  # a client on a listener without authentication
