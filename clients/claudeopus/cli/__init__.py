"""The ``claudeopus`` command line: serve, control, edge, admin."""
