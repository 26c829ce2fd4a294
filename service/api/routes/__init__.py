"""Routers, assembled in ``service.app``."""
