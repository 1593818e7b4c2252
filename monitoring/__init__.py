"""What the served model sees: request logs written by the server, and input drift against the
training data (TFDV), with the ``lvseg drift`` command."""
