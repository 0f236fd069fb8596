"""Attack suite: hostile code through ``custom:run`` in hardened docker workers."""
