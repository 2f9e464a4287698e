"""chatbox: a TCP chat box whose server relays lines between any number of clients."""

__version__ = "0.1.0"
