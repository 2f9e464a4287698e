"""harness: launches real chat servers and clients and checks what they deliver."""
