"""The harness tests itself: faulty relays and the matrix of which check catches which."""
