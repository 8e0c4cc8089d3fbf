"""Edge-triggered sources: they turn outside signals into portfolio keys, never into row writes."""
