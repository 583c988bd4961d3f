"""Power-bank inventory and the serial-prefix → model mapping."""
