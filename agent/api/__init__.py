"""The local API: the operations, the control socket that serves them, and its client."""
