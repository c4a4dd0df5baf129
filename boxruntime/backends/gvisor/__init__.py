"""gvisor."""
