"""Trapeze for Python: serverless functions under dynamic information flow control."""

__version__ = "0.1.0"
