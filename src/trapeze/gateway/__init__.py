"""The HTTP gateway and authentication (TCB)."""
